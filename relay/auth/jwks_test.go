package auth_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/auth/authtest"
)

const issuer = "https://id.example.test/"

// claims returns valid claims of issuer iss for subscriber zowi-1.
func claims(iss string) jwt.MapClaims {
	return jwt.MapClaims{"sub": "zowi-1", "iss": iss, "aud": "pgrelay", "exp": time.Now().Add(time.Hour).Unix()}
}

// open returns a Verifier with keys, failing the test if it cannot start.
func open(t *testing.T, keys auth.Keys, opts auth.Options) *auth.Verifier {
	t.Helper()
	v, err := auth.Open(context.Background(), keys, opts)
	if err != nil {
		t.Fatalf("open verifier: %v", err)
	}
	return v
}

// run runs v's refresher until the test ends.
func run(t *testing.T, v *auth.Verifier) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// eventually polls cond until it holds, failing the test after 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// refused checks that v refuses token with ErrBadToken, saying want.
func refused(t *testing.T, v *auth.Verifier, token, want string) {
	t.Helper()
	id, err := v.VerifyIdentity(token)
	if err == nil {
		t.Fatalf("accepted as %+v", id)
	}
	if !errors.Is(err, auth.ErrBadToken) {
		t.Fatalf("error %v is not ErrBadToken (the HTTP layer maps only that to 401)", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

var (
	keysOnce  sync.Once
	keysByAlg map[string]*authtest.Key
)

// someKeys returns one key per algorithm, generated once for the package:
// RSA keys take a while.
func someKeys(t *testing.T) map[string]*authtest.Key {
	keysOnce.Do(func() {
		keysByAlg = map[string]*authtest.Key{}
		rsa := authtest.NewKey(t, "RS256", "rsa-1")
		for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} {
			k := *rsa
			k.Alg, k.ID = alg, "rsa-"+alg
			keysByAlg[alg] = &k
		}
		for _, alg := range []string{"ES256", "ES384", "ES512", "EdDSA"} {
			keysByAlg[alg] = authtest.NewKey(t, alg, "key-"+alg)
		}
	})
	return keysByAlg
}

func TestTokensSignedWithEveryAsymmetricAlgorithmOfAJWKSAreAccepted(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	var published []*authtest.Key
	for _, k := range keys {
		published = append(published, k)
	}
	p := authtest.NewProvider(t, published...)
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{Audience: "pgrelay"})
	for alg, k := range keys {
		t.Run(alg, func(t *testing.T) {
			id, err := v.VerifyIdentity(k.Sign(t, claims(issuer)))
			if err != nil || id.Subject != "zowi-1" {
				t.Fatalf("got %+v, %v; want zowi-1", id, err)
			}
		})
	}
}

func TestTokensSignedWithAStaticPublicKeyAreAccepted(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	path := filepath.Join(t.TempDir(), "keys.pem")
	pems := append(keys["RS256"].PublicPEM(t), keys["EdDSA"].PublicPEM(t)...)
	if err := os.WriteFile(path, pems, 0o600); err != nil {
		t.Fatal(err)
	}
	v := open(t, auth.Keys{PublicKeyFiles: []string{path}}, auth.Options{})
	for _, alg := range []string{"RS256", "PS256", "EdDSA"} {
		if id, err := v.VerifyIdentity(keys[alg].Sign(t, claims(issuer))); err != nil || id.Subject != "zowi-1" {
			t.Errorf("%s: got %+v, %v; want zowi-1", alg, id, err)
		}
	}
	refused(t, v, keys["ES256"].Sign(t, claims(issuer)), "no public key for ES256")
}

func TestAKeyVerifiesOnlyTokensOfTheIssuerItsJWKSIsFor(t *testing.T) {
	t.Parallel()
	// Both providers publish the same kid: a cache keyed by kid alone would
	// let one provider's key answer for the other's tokens.
	keyA := authtest.NewKey(t, "ES256", "k1")
	keyB := authtest.NewKey(t, "ES256", "k1")
	a, b := authtest.NewProvider(t, keyA), authtest.NewProvider(t, keyB)
	const issA, issB = "https://a.example.test", "https://b.example.test"
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issA, URL: a.URL}, {Issuer: issB, URL: b.URL}}}, auth.Options{})
	for _, ok := range []struct {
		key *authtest.Key
		iss string
	}{{keyA, issA}, {keyB, issB}} {
		if _, err := v.VerifyIdentity(ok.key.Sign(t, claims(ok.iss))); err != nil {
			t.Fatalf("a token of %s signed by its own key: %v; the cases below would prove nothing", ok.iss, err)
		}
	}
	refused(t, v, keyB.Sign(t, claims(issA)), "bad signature")
	refused(t, v, keyA.Sign(t, claims(issB)), "bad signature")
	refused(t, v, keyA.Sign(t, claims("https://c.example.test")), "no public key")
	refused(t, v, keyA.Sign(t, claims("")), "no public key")
}

func TestAnIssuerWithAJWKSIsVerifiedByItsKeysOnly(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	p := authtest.NewProvider(t, keys["ES256"])
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, keys["EdDSA"].PublicPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	v := open(t, auth.Keys{Secret: []byte(secret), PublicKeyFiles: []string{path}, JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{})
	if _, err := v.VerifyIdentity(keys["EdDSA"].Sign(t, claims("https://own-service.test"))); err != nil {
		t.Fatalf("the static key, for an issuer without a JWKS: %v", err)
	}
	refused(t, v, keys["EdDSA"].Sign(t, claims(issuer)), "no key with kid")
	// The secret is the relay's own, and a provider that moves from a
	// shared secret to a JWKS issues both kinds for a while.
	for _, iss := range []string{"", issuer} {
		if _, err := v.VerifyIdentity(signHS256(t, claims(iss), secret)); err != nil {
			t.Errorf("an HS256 token of issuer %q: %v", iss, err)
		}
	}
}

func signHS256(t *testing.T, c jwt.MapClaims, key string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTheAlgorithmMustFitTheKey(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	rs := keys["RS256"]
	// A JWK that names its algorithm takes that one only; one that does not
	// takes those of its type (and, for EC, its curve).
	bareRSA, bareP256 := authtest.NewKey(t, "RS256", "bare-rsa"), authtest.NewKey(t, "ES256", "bare-p256")
	p := authtest.NewProvider(t)
	p.PublishJWKs(t, rs.JWK(t), keys["ES256"].JWK(t), keys["EdDSA"].JWK(t), withoutAlg(t, bareRSA.JWK(t)), withoutAlg(t, bareP256.JWK(t)))
	lax := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{})
	withSecret := open(t, auth.Keys{Secret: []byte(secret), JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{})
	for _, ok := range []string{rs.Sign(t, claims(issuer)), bareRSA.SignAs(t, "PS256", bareRSA.ID, claims(issuer)), bareP256.Sign(t, claims(issuer))} {
		if _, err := lax.VerifyIdentity(ok); err != nil {
			t.Fatalf("a token its key fits: %v; the cases below would prove nothing", err)
		}
	}
	pemBytes := rs.PublicPEM(t)
	p384 := keys["ES384"]
	cases := []struct {
		name  string
		v     *auth.Verifier
		token string
		want  string
	}{
		{"PS256 under a key published for RS256", lax, rs.SignAs(t, "PS256", rs.ID, claims(issuer)), "does not take PS256"},
		{"ES256 header naming an Ed25519 key", lax, keys["ES256"].SignAs(t, "ES256", keys["EdDSA"].ID, claims(issuer)), "does not take ES256"},
		{"EdDSA header naming an EC key", lax, keys["EdDSA"].SignAs(t, "EdDSA", keys["ES256"].ID, claims(issuer)), "does not take EdDSA"},
		{"ES384 under a P-256 key without alg", lax, p384.SignAs(t, "ES384", bareP256.ID, claims(issuer)), "does not take ES384"},
		{"ES256 under an RSA key without alg", lax, bareP256.SignAs(t, "ES256", bareRSA.ID, claims(issuer)), "does not take ES256"},
		{"alg none", lax, unsigned(t, map[string]any{"alg": "none", "kid": rs.ID}, claims(issuer)), "unsupported signing algorithm"},
		{"HS256 signed with the public key's PEM, no secret configured", lax, hmacWithKid(t, rs.ID, claims(issuer), pemBytes), "unsupported signing algorithm"},
		{"HS256 signed with the public key's PEM, a secret configured", withSecret, hmacWithKid(t, rs.ID, claims(issuer), pemBytes), "bad signature"},
		{"HS384 signed with the public key's PEM", withSecret, sign384(t, claims(issuer), pemBytes), "unsupported signing algorithm"},
		{"no exp", lax, rs.Sign(t, without(claims(issuer), "exp")), "no exp claim"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { refused(t, c.v, c.token, c.want) })
	}
}

// withoutAlg removes the alg member from a JWK.
func withoutAlg(t *testing.T, j json.RawMessage) json.RawMessage {
	t.Helper()
	return editJWK(t, j, func(m map[string]any) { delete(m, "alg") })
}

// editJWK returns j changed by edit.
func editJWK(t *testing.T, j json.RawMessage, edit func(map[string]any)) json.RawMessage {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func without(c jwt.MapClaims, name string) jwt.MapClaims {
	delete(c, name)
	return c
}

func unsigned(t *testing.T, header map[string]any, c jwt.MapClaims) string {
	t.Helper()
	return sign(t, header, c, nil)
}

func hmacWithKid(t *testing.T, kid string, c jwt.MapClaims, key []byte) string {
	t.Helper()
	return sign(t, map[string]any{"alg": "HS256", "kid": kid}, c, key)
}

func sign384(t *testing.T, c jwt.MapClaims, key []byte) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS384, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAnUnknownKidCausesOneRefetchNotOnePerRequest(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	old := keys["ES256"]
	p := authtest.NewProvider(t, old)
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}, MinRefetch: time.Hour}, auth.Options{})
	if got := p.Requests(); got != 1 {
		t.Fatalf("JWKS requests after start: %d, want 1", got)
	}
	// Each token's kid is one the provider does not publish: all of them
	// together cause one refetch, which finds none of them.
	stranger := authtest.NewKey(t, "ES256", "")
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			tok := stranger.SignAs(t, "ES256", "made-up-"+string(rune('a'+i%26)), claims(issuer))
			if _, err := v.VerifyIdentity(tok); err == nil {
				t.Error("a token with an unpublished kid was accepted")
			}
		})
	}
	wg.Wait()
	if got := p.Requests(); got != 2 {
		t.Fatalf("JWKS requests after 50 tokens with unknown kids: %d, want 2 (start and one refetch)", got)
	}
	// A key published now is not fetched for until MinRefetch has passed.
	rotated := authtest.NewKey(t, "ES256", "rotated")
	p.Publish(t, old, rotated)
	refused(t, v, rotated.Sign(t, claims(issuer)), "no key with kid \"rotated\"")
	if got := p.Requests(); got != 2 {
		t.Fatalf("JWKS requests within MinRefetch of the last: %d, want still 2", got)
	}
}

func TestARotatedKeyIsFetchedWhenATokenNamesIt(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	old := keys["ES256"]
	p := authtest.NewProvider(t, old)
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}, MinRefetch: time.Nanosecond, Refresh: time.Hour}, auth.Options{})
	rotated := authtest.NewKey(t, "EdDSA", "rotated")
	p.Publish(t, rotated)
	if _, err := v.VerifyIdentity(rotated.Sign(t, claims(issuer))); err != nil {
		t.Fatalf("a token with the new kid: %v", err)
	}
	refused(t, v, old.Sign(t, claims(issuer)), "no key with kid")
}

func TestTheBackgroundRefreshPicksUpRotatedKeys(t *testing.T) {
	t.Parallel()
	keys := someKeys(t)
	p := authtest.NewProvider(t, keys["ES256"])
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}, Refresh: 20 * time.Millisecond, MinRefetch: time.Hour}, auth.Options{})
	run(t, v)
	rotated := keys["EdDSA"]
	p.Publish(t, keys["ES256"], rotated)
	before := p.Requests()
	eventually(t, "a background refresh", func() bool { return p.Requests() > before })
	eventually(t, "the rotated key accepted", func() bool {
		_, err := v.VerifyIdentity(rotated.Sign(t, claims(issuer)))
		return err == nil
	})
}

func TestStartingFailsNamingAJWKSThatCannotBeFetched(t *testing.T) {
	t.Parallel()
	down := authtest.NewProvider(t, someKeys(t)["ES256"])
	down.SetDown(true)
	empty := authtest.NewProvider(t)
	encOnly := authtest.NewProvider(t)
	encOnly.PublishJWKs(t, json.RawMessage(`{"kty":"oct","kid":"s","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}`))
	gone := httptest.NewServer(nil)
	gone.Close()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak := authtest.NewProvider(t)
	weak.PublishJWKs(t, json.RawMessage(`{"kty":"RSA","kid":"small","alg":"RS256","e":"AQAB","n":"`+base64.RawURLEncoding.EncodeToString(small.N.Bytes())+`"}`))
	for _, c := range []struct {
		name, url, want string
	}{
		{"503", down.URL, "503"},
		{"no keys", empty.URL, "no usable signing key"},
		{"only a symmetric key", encOnly.URL, "symmetric"},
		{"only a 1024-bit RSA key", weak.URL, "no usable signing key"},
		{"connection refused", gone.URL + "/jwks.json", "refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := auth.Open(context.Background(), auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: c.url}}}, auth.Options{})
			if err == nil || !strings.Contains(err.Error(), c.url) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %s and saying %q", err, c.url, c.want)
			}
		})
	}
}

func TestKeysAJWKSMustNotHoldAreSkipped(t *testing.T) {
	t.Parallel()
	good := authtest.NewKey(t, "ES256", "good")
	enc, signOnly, private := authtest.NewKey(t, "ES256", "enc"), authtest.NewKey(t, "ES256", "sign-only"), authtest.NewKey(t, "ES256", "private")
	p := authtest.NewProvider(t)
	p.PublishJWKs(t,
		json.RawMessage(`{"kty":"oct","kid":"hmac","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ","alg":"HS256"}`),
		editJWK(t, enc.JWK(t), func(m map[string]any) { m["use"] = "enc" }),
		editJWK(t, signOnly.JWK(t), func(m map[string]any) { delete(m, "use"); m["key_ops"] = []string{"sign"} }),
		private.PrivateJWK(t),
		json.RawMessage(`{"kty":"future-kind","kid":"new"}`),
		good.JWK(t),
	)
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{})
	if _, err := v.VerifyIdentity(good.Sign(t, claims(issuer))); err != nil {
		t.Fatalf("the usable key among unusable ones: %v", err)
	}
	refused(t, v, sign(t, map[string]any{"alg": "HS256", "kid": "hmac"}, claims(issuer), []byte("secret-secret-secret")), "unsupported signing algorithm")
	for _, k := range []*authtest.Key{enc, signOnly, private} {
		refused(t, v, k.Sign(t, claims(issuer)), "no key with kid \""+k.ID+"\"")
	}
}

func TestAnOutageServesTheLastGoodKeysAndIsLoggedOnce(t *testing.T) {
	t.Parallel()
	key := someKeys(t)["ES256"]
	p := authtest.NewProvider(t, key)
	var logs syncBuffer
	v := open(t, auth.Keys{
		JWKS:    []auth.JWKS{{Issuer: issuer, URL: p.URL}},
		Refresh: 10 * time.Millisecond, MinRefetch: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}, auth.Options{})
	run(t, v)
	p.SetDown(true)
	from := p.Requests()
	eventually(t, "three failed refreshes", func() bool { return p.Requests() >= from+3 })
	if _, err := v.VerifyIdentity(key.Sign(t, claims(issuer))); err != nil {
		t.Fatalf("during the outage: %v; want the last good keys served", err)
	}
	if n := strings.Count(logs.String(), "JWKS fetch failed"); n != 1 {
		t.Fatalf("%d outage warnings for one outage, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), p.URL) {
		t.Errorf("the warning does not name the URL:\n%s", logs.String())
	}
	p.SetDown(false)
	eventually(t, "the recovery logged", func() bool { return strings.Contains(logs.String(), "JWKS fetched again") })
	p.SetDown(true)
	eventually(t, "the second outage logged", func() bool { return strings.Count(logs.String(), "JWKS fetch failed") == 2 })
}

func TestRunReturnsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	p := authtest.NewProvider(t, someKeys(t)["ES256"])
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}, Refresh: time.Millisecond}, auth.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want nil on cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after its context ended")
	}
}

func TestTheSubjectComesFromTheConfiguredClaim(t *testing.T) {
	t.Parallel()
	key := someKeys(t)["EdDSA"]
	p := authtest.NewProvider(t, key)
	v := open(t, auth.Keys{JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{SubjectClaim: "user_id"})
	with := func(uid any) jwt.MapClaims {
		c := claims(issuer)
		c["sub"] = "provider-internal-id"
		if uid != nil {
			c["user_id"] = uid
		}
		return c
	}
	id, err := v.VerifyIdentity(key.Sign(t, with("zowi-1")))
	if err != nil || id.Subject != "zowi-1" {
		t.Fatalf("got %+v, %v; want the user_id claim zowi-1", id, err)
	}
	refused(t, v, key.Sign(t, with(nil)), "no user_id claim")
	refused(t, v, key.Sign(t, with("")), "no user_id claim")
	refused(t, v, key.Sign(t, with(42)), "user_id claim is not a string")
	refused(t, v, key.Sign(t, with("zowi-1\x00")), "user_id contains a NUL")
	refused(t, v, key.Sign(t, with(strings.Repeat("z", auth.MaxSubjectLen+1))), "user_id longer than")
}

func TestIssuerAndAudienceApplyToEveryKeySource(t *testing.T) {
	t.Parallel()
	key := someKeys(t)["ES256"]
	p := authtest.NewProvider(t, key)
	v := open(t, auth.Keys{Secret: []byte(secret), JWKS: []auth.JWKS{{Issuer: issuer, URL: p.URL}}}, auth.Options{Issuer: issuer, Audience: "pgrelay"})
	if _, err := v.VerifyIdentity(key.Sign(t, claims(issuer))); err != nil {
		t.Fatalf("the well-formed token: %v", err)
	}
	wrongAud := claims(issuer)
	wrongAud["aud"] = "another-service"
	refused(t, v, key.Sign(t, wrongAud), "wrong audience")
	refused(t, v, key.Sign(t, without(claims(issuer), "aud")), "missing")
	refused(t, v, signHS256(t, claims("https://other.test"), secret), "wrong issuer")
}

func TestAJWKSMustBeBoundToTheIssuerItSignsFor(t *testing.T) {
	t.Parallel()
	p := authtest.NewProvider(t, someKeys(t)["ES256"])
	if _, err := auth.Open(context.Background(), auth.Keys{JWKS: []auth.JWKS{{URL: p.URL}}}, auth.Options{}); err == nil || !strings.Contains(err.Error(), "no issuer") {
		t.Errorf("a JWKS without an issuer: %v, want an error saying so", err)
	}
	_, err := auth.Open(context.Background(), auth.Keys{JWKS: []auth.JWKS{{Issuer: "https://a.test", URL: p.URL}}}, auth.Options{Issuer: "https://b.test"})
	if err == nil || !strings.Contains(err.Error(), "https://a.test") {
		t.Errorf("a JWKS for an issuer other than the accepted one: %v, want an error naming it", err)
	}
	if got := p.Requests(); got != 0 {
		t.Errorf("%d JWKS requests for configurations that were refused, want 0", got)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
