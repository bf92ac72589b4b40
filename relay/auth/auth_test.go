package auth_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/relay/auth"
)

// sign builds a token by hand, so a test can produce what no honest issuer
// would: any header, any claims, an HMAC-SHA256 signature with key (or none
// when key is nil).
func sign(t *testing.T, header, claims map[string]any, key []byte) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	unsigned := enc(header) + "." + enc(claims)
	if key == nil {
		return unsigned + "."
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(unsigned))
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func TestHostileTokensAreRejected(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	key := []byte(secret)
	valid := map[string]any{"sub": "zowi-1", "exp": now.Add(time.Hour).Unix(), "iss": "https://issuer.test", "aud": "pgrelay"}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for kk, vv := range valid {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	hs256 := map[string]any{"alg": "HS256", "typ": "JWT"}
	hs512, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims(valid)).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	strict := auth.NewVerifier(key, auth.Options{Issuer: "https://issuer.test", Audience: "pgrelay", Now: func() time.Time { return now }})
	lax := auth.NewVerifier(key, auth.Options{Now: func() time.Time { return now }})

	if sub, err := strict.Verify(sign(t, hs256, valid, key)); err != nil || sub != "zowi-1" {
		t.Fatalf("the well-formed token: sub %q, err %v; the cases below would prove nothing", sub, err)
	}
	cases := []struct {
		name  string
		v     *auth.Verifier
		token string
		want  string
	}{
		{"alg none, unsigned", lax, sign(t, map[string]any{"alg": "none"}, valid, nil), "unsupported signing algorithm"},
		{"alg none with an HS256 signature", lax, sign(t, map[string]any{"alg": "none"}, valid, key), "unsupported signing algorithm"},
		{"HS512 signed with the same secret", lax, hs512, "unsupported signing algorithm"},
		{"RS256 header, HMAC signature with the secret (algorithm confusion)", lax, sign(t, map[string]any{"alg": "RS256"}, valid, key), "unsupported signing algorithm"},
		{"alg missing", lax, sign(t, map[string]any{"typ": "JWT"}, valid, key), ""},
		{"signed with another secret", lax, sign(t, hs256, valid, []byte("another-secret-0123456789")), "bad signature"},
		{"signature stripped", lax, sign(t, hs256, valid, nil), ""},
		{"no sub", lax, sign(t, hs256, with("sub", nil), key), "no sub claim"},
		{"empty sub", lax, sign(t, hs256, with("sub", ""), key), "no sub claim"},
		{"sub not a string", lax, sign(t, hs256, with("sub", 42), key), ""},
		{"expired", lax, sign(t, hs256, with("exp", now.Add(-time.Minute).Unix()), key), "expired"},
		{"nbf in the future", lax, sign(t, hs256, with("nbf", now.Add(time.Minute).Unix()), key), "not valid yet"},
		{"exp not a number", lax, sign(t, hs256, with("exp", "tomorrow"), key), ""},
		{"no exp: it would never expire", lax, sign(t, hs256, with("exp", nil), key), "no exp claim"},
		{"expired a moment ago, within the clock leeway", lax, sign(t, hs256, with("exp", now.Add(-2*time.Second).Unix()), key), "expired"},
		{"sub with a NUL character", lax, sign(t, hs256, with("sub", "zowi-1\x00"), key), "NUL"},
		{"sub longer than any subscriber id", lax, sign(t, hs256, with("sub", strings.Repeat("z", auth.MaxSubjectLen+1)), key), "sub longer than"},
		{"wrong issuer", strict, sign(t, hs256, with("iss", "https://evil.test"), key), "wrong issuer"},
		{"no issuer when one is required", strict, sign(t, hs256, with("iss", nil), key), "missing"},
		{"wrong audience", strict, sign(t, hs256, with("aud", "another-service"), key), "wrong audience"},
		{"no audience when one is required", strict, sign(t, hs256, with("aud", nil), key), "missing"},
		{"longer than the limit", lax, sign(t, hs256, with("pad", strings.Repeat("x", 9000)), key), "longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sub, err := c.v.Verify(c.token)
			if err == nil {
				t.Fatalf("accepted as %q", sub)
			}
			if !errors.Is(err, auth.ErrBadToken) {
				t.Fatalf("error %v is not ErrBadToken (the HTTP layer maps only that to 401)", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
		})
	}
}

func TestAVerifiedTokenYieldsItsExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	v := auth.NewVerifier([]byte(secret), auth.Options{Now: func() time.Time { return now }})
	exp := now.Add(3 * time.Second)
	id, err := v.VerifyIdentity(sign(t, map[string]any{"alg": "HS256"}, map[string]any{"sub": "zowi-1", "exp": exp.Unix()}, []byte(secret)))
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "zowi-1" || !id.Expires.Equal(exp) {
		t.Fatalf("got %+v, want subject zowi-1 expiring at %s", id, exp)
	}
}

func TestASubjectPostgreSQLCannotStoreIsRejected(t *testing.T) {
	t.Parallel()
	// JSON cannot carry invalid UTF-8 (decoders replace it), but the
	// development ?user= parameter can.
	v := auth.NewVerifier([]byte(secret), auth.Options{InsecureDev: true})
	for _, user := range []string{"%FF%FE", "zowi-1%00", strings.Repeat("z", auth.MaxSubjectLen+1)} {
		r := httptest.NewRequest("GET", "/events?user="+user, nil)
		if id, err := v.Authenticate(r); !errors.Is(err, auth.ErrBadToken) {
			t.Errorf("?user=%.20s: got %+v, %v; want ErrBadToken", user, id, err)
		}
	}
}

func TestAVerifierWithoutASecretAcceptsNoToken(t *testing.T) {
	t.Parallel()
	// A dev-mode relay has no secret: a token signed with the empty key
	// must not pass for a real one.
	v := auth.NewVerifier(nil, auth.Options{InsecureDev: true})
	token := sign(t, map[string]any{"alg": "HS256"}, map[string]any{"sub": "zowi-1", "exp": time.Now().Add(time.Hour).Unix()}, []byte{})
	if sub, err := v.Verify(token); err == nil {
		t.Fatalf("accepted a token signed with the empty key as %q", sub)
	}
}
