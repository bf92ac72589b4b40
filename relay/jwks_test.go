package relay_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth/authtest"
)

const idpIssuer = "https://idp.example.test/"

// idpClaims returns claims of idpIssuer for subscriber sub, valid for ttl.
func idpClaims(sub string, ttl time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "iss": idpIssuer, "aud": "pgrelay", "exp": time.Now().Add(ttl).Unix()}
}

// withJWKS makes a relay accept tokens of idpIssuer signed with the keys p
// publishes, for audience pgrelay.
func withJWKS(p *authtest.Provider) func(*relay.Config) {
	return func(c *relay.Config) {
		c.JWKSURLs = []string{idpIssuer + "=" + p.URL}
		c.JWTAudience = "pgrelay"
	}
}

// answer returns the status GET /events answers token with.
func answer(t *testing.T, base, token string) int {
	t.Helper()
	code, _ := get(t, base, "", [][2]string{{"Authorization", "Bearer " + token}})
	return code
}

func TestTokensOfEveryKeyTypeOfAJWKSOpenStreamsOnEveryTransport(t *testing.T) {
	t.Parallel()
	keys := []*authtest.Key{authtest.NewKey(t, "RS256", "rsa"), authtest.NewKey(t, "ES256", "ec"), authtest.NewKey(t, "EdDSA", "ed")}
	p := authtest.NewProvider(t, keys...)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, withJWKS(p))
	var sse []*relaytest.SSE
	var ws []*relaytest.WS
	for _, k := range keys {
		tok := k.Sign(t, idpClaims("zowi-1", time.Hour))
		sse = append(sse, relaytest.Subscribe(t, r.URL, tok, relaytest.SSEOptions{}))
		ws = append(ws, relaytest.SubscribeWS(t, r.URL, tok, relaytest.SSEOptions{}))
	}
	relaytest.InsertTemplate(t, db, "for every stream", "zolo-1", "loc-1")
	for i, k := range keys {
		if got := relaytest.TemplateNames(t, sse[i].Collect(t, 1, 10*time.Second)); got[0] != "for every stream" {
			t.Errorf("SSE stream of the %s token got %v", k.Alg, got)
		}
		if got := relaytest.TemplateNames(t, ws[i].Collect(t, 1, 10*time.Second)); got[0] != "for every stream" {
			t.Errorf("WebSocket stream of the %s token got %v", k.Alg, got)
		}
	}
	// The HS256 secret still works beside the JWKS (and --jwt-audience
	// applies to its tokens too).
	hs := jwt.MapClaims{"sub": "zowi-1", "aud": "pgrelay", "exp": time.Now().Add(time.Hour).Unix()}
	if code := answer(t, r.URL, signed(t, jwt.SigningMethodHS256, []byte(relaytest.Secret), hs)); code != http.StatusOK {
		t.Errorf("an HS256 token beside the JWKS: %d, want 200", code)
	}
}

func TestARotatedKeyIsAcceptedWithinOneRefreshAndOpenStreamsLastUntilTheirExp(t *testing.T) {
	t.Parallel()
	old, rotated := authtest.NewKey(t, "ES256", "2026-01"), authtest.NewKey(t, "ES256", "2026-02")
	p := authtest.NewProvider(t, old)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	const refresh = 100 * time.Millisecond
	r := relaytest.Start(t, db.URL, withJWKS(p), relay.WithJWKSTiming(refresh, time.Hour))
	// The streams' tokens expire soon, so that the test sees them end.
	oldToken := old.Sign(t, idpClaims("zowi-1", 4*time.Second))
	sse := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(oldToken))
	ws := relaytest.SubscribeWS(t, r.URL, oldToken, relaytest.SSEOptions{})

	p.Publish(t, rotated)
	fetched := p.Requests()
	relaytest.Eventually(t, 5*time.Second, "a refresh after the rotation", func() bool { return p.Requests() > fetched })
	if code := answer(t, r.URL, rotated.Sign(t, idpClaims("zowi-1", time.Hour))); code != http.StatusOK {
		t.Fatalf("a token of the rotated key after one refresh: %d, want 200", code)
	}
	if code := answer(t, r.URL, old.Sign(t, idpClaims("zowi-1", time.Hour))); code != http.StatusUnauthorized {
		t.Fatalf("a new token of the withdrawn key: %d, want 401", code)
	}

	relaytest.InsertTemplate(t, db, "after the rotation", "zolo-1", "loc-1")
	if got := relaytest.TemplateNames(t, sse.Collect(t, 1, 10*time.Second)); got[0] != "after the rotation" {
		t.Errorf("the SSE stream of the withdrawn key got %v", got)
	}
	if got := relaytest.TemplateNames(t, ws.Collect(t, 1, 10*time.Second)); got[0] != "after the rotation" {
		t.Errorf("the WebSocket stream of the withdrawn key got %v", got)
	}
	// They end at their token's exp, as any stream does.
	if _, err := ws.WaitClosed(t, 10*time.Second); websocket.CloseStatus(err) != 4401 {
		t.Errorf("the WebSocket stream ended with %v, want close code 4401 at its token's exp", err)
	}
	select {
	case <-sse.Done():
	case <-time.After(10 * time.Second):
		t.Error("the SSE stream still open 10s after its token expired")
	}
}

func TestAnUnknownKidCausesOneJWKSFetchNotOnePerRequest(t *testing.T) {
	t.Parallel()
	known := authtest.NewKey(t, "ES256", "known")
	p := authtest.NewProvider(t, known)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, withJWKS(p), relay.WithJWKSTiming(time.Hour, time.Hour))
	if got := p.Requests(); got != 1 {
		t.Fatalf("JWKS requests after start: %d, want 1", got)
	}
	stranger := authtest.NewKey(t, "ES256", "")
	for i := range 20 {
		tok := stranger.SignAs(t, "ES256", "unknown-"+strings.Repeat("x", i), idpClaims("zowi-1", time.Hour))
		if code := answer(t, r.URL, tok); code != http.StatusUnauthorized {
			t.Fatalf("token %d with an unknown kid: %d, want 401", i, code)
		}
	}
	if got := p.Requests(); got != 2 {
		t.Fatalf("JWKS requests after 20 tokens with unknown kids: %d, want 2 (start and one refetch)", got)
	}
}

func TestTheRelayDoesNotStartWithoutTheKeysOfEveryJWKS(t *testing.T) {
	t.Parallel()
	up, down := authtest.NewProvider(t, authtest.NewKey(t, "EdDSA", "up")), authtest.NewProvider(t)
	down.SetDown(true)
	cfg := relaytest.Config("postgres://127.0.0.1:1/never-reached")
	cfg.JWKSURLs = []string{"https://up.test/=" + up.URL, "https://down.test/=" + down.URL}
	_, err := relay.New(context.Background(), cfg, relaytest.Logger())
	if err == nil || !strings.Contains(err.Error(), down.URL) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("got %v, want an error naming %s and its 503", err, down.URL)
	}
}

func TestAJWKSOutageAfterStartServesTheLastGoodKeys(t *testing.T) {
	t.Parallel()
	key := authtest.NewKey(t, "EdDSA", "ed")
	p := authtest.NewProvider(t, key)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	logs := &relaytest.Buffer{}
	r := relaytest.StartLogging(t, db.URL, slog.New(slog.NewTextHandler(logs, nil)), withJWKS(p), relay.WithJWKSTiming(20*time.Millisecond, 20*time.Millisecond))
	p.SetDown(true)
	failed := p.Requests()
	relaytest.Eventually(t, 5*time.Second, "two refreshes while the provider is down", func() bool { return p.Requests() >= failed+2 })
	if code := answer(t, r.URL, key.Sign(t, idpClaims("zowi-1", time.Hour))); code != http.StatusOK {
		t.Fatalf("a token of the last good keys during the outage: %d, want 200", code)
	}
	if n := strings.Count(logs.String(), "JWKS fetch failed"); n != 1 {
		t.Errorf("%d warnings for one outage, want 1:\n%s", n, logs.String())
	}
}

func TestTheSubscriberIsTheConfiguredClaim(t *testing.T) {
	t.Parallel()
	key := authtest.NewKey(t, "ES256", "ec")
	p := authtest.NewProvider(t, key)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, withJWKS(p), func(c *relay.Config) { c.JWTSubjectClaim = "user_id" })
	claims := idpClaims("auth0|5f7c8ec7c33c6c004bbafe82", time.Hour)
	claims["user_id"] = "zowi-1"
	s := relaytest.Subscribe(t, r.URL, key.Sign(t, claims), relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "for zowi-1", "zolo-1", "loc-1")
	if got := relaytest.TemplateNames(t, s.Collect(t, 1, 10*time.Second)); got[0] != "for zowi-1" {
		t.Errorf("got %v", got)
	}
	delete(claims, "user_id")
	if code, msg := get(t, r.URL, "", [][2]string{{"Authorization", "Bearer " + key.Sign(t, claims)}}); code != http.StatusUnauthorized || !strings.Contains(msg, "no user_id claim") {
		t.Errorf("a token without user_id: %d %q, want 401 saying so", code, msg)
	}
}

func TestHostileTokensForAJWKSAreRejectedWith401(t *testing.T) {
	t.Parallel()
	rsa := authtest.NewKey(t, "RS256", "rsa")
	other := authtest.NewKey(t, "RS256", "rsa") // another provider, the same kid
	p, q := authtest.NewProvider(t, rsa), authtest.NewProvider(t, other)
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, withJWKS(p), func(c *relay.Config) {
		c.JWKSURLs = append(c.JWKSURLs, "https://other.example.test/="+q.URL)
	})
	claims := func(iss string) jwt.MapClaims {
		c := idpClaims("zowi-1", time.Hour)
		c["iss"] = iss
		return c
	}
	for _, ok := range []string{rsa.Sign(t, claims(idpIssuer)), other.Sign(t, claims("https://other.example.test/"))} {
		if code := answer(t, r.URL, ok); code != http.StatusOK {
			t.Fatalf("a token of each provider's own key got %d; the cases below would prove nothing", code)
		}
	}
	pemKey := rsa.PublicPEM(t)
	cases := []struct{ name, token, want string }{
		{"another provider's key for this issuer", other.Sign(t, claims(idpIssuer)), "bad signature"},
		{"this provider's key for another issuer", rsa.Sign(t, claims("https://other.example.test/")), "bad signature"},
		{"an issuer without keys here", rsa.Sign(t, claims("https://evil.example.test/")), "no public key"},
		{"PS256 under a key published for RS256", rsa.SignAs(t, "PS256", rsa.ID, claims(idpIssuer)), "does not take PS256"},
		{"alg none", unsignedWithKid(t, "none", rsa.ID, claims(idpIssuer)), "unsupported signing algorithm"},
		{"HS256 signed with the public key's PEM", hmacWithKey(t, rsa.ID, claims(idpIssuer), pemKey), "bad signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, how := range []struct {
				query   string
				headers [][2]string
			}{
				{"", [][2]string{{"Authorization", "Bearer " + c.token}}},
				{"access_token=" + url.QueryEscape(c.token), nil},
			} {
				code, msg := get(t, r.URL, how.query, how.headers)
				if code != http.StatusUnauthorized || !strings.Contains(msg, c.want) {
					t.Errorf("got %d %q, want 401 saying %q", code, msg, c.want)
				}
			}
		})
	}
}

// unsignedWithKid returns a token whose header says alg and kid, with no
// signature.
func unsignedWithKid(t *testing.T, alg, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
	tok.Header["alg"], tok.Header["kid"] = alg, kid
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hmacWithKey returns an HS256 token with kid, signed with key: with a
// public key's bytes, the classic algorithm confusion.
func hmacWithKey(t *testing.T, kid string, claims jwt.MapClaims, key []byte) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
