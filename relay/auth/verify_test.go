package auth_test

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/relay/auth"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestVerifyAcceptsOnlyValidHS256TokensWithASubject(t *testing.T) {
	now := time.Now()
	v := auth.NewVerifier(secret, auth.Options{Issuer: "app", Audience: "relay"})
	good := jwt.MapClaims{"sub": "u1", "iss": "app", "aud": "relay", "exp": now.Add(time.Hour).Unix()}
	with := func(k string, val any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for key, v := range good {
			c[key] = v
		}
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	cases := []struct {
		name  string
		token string
		want  string // "" = accepted
	}{
		{"valid", sign(t, jwt.SigningMethodHS256, secret, good), ""},
		{"alg none", none, "unsupported signing algorithm"},
		{"HS512", sign(t, jwt.SigningMethodHS512, secret, good), "unsupported signing algorithm"},
		{"other secret", sign(t, jwt.SigningMethodHS256, []byte("another secret, long enough"), good), "bad signature"},
		{"missing sub", sign(t, jwt.SigningMethodHS256, secret, with("sub", nil)), "no sub claim"},
		{"expired", sign(t, jwt.SigningMethodHS256, secret, with("exp", now.Add(-time.Minute).Unix())), "expired"},
		{"not valid yet", sign(t, jwt.SigningMethodHS256, secret, with("nbf", now.Add(time.Hour).Unix())), "not valid yet"},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, secret, with("iss", "evil")), "wrong issuer"},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, secret, with("aud", "other")), "wrong audience"},
		{"garbage", "not.a.token", "malformed"},
		{"oversized", strings.Repeat("a", 9000), "longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sub, err := v.Verify(c.token)
			if c.want == "" {
				if err != nil || sub != "u1" {
					t.Fatalf("got %q, %v; want u1 accepted", sub, err)
				}
				return
			}
			if !errors.Is(err, auth.ErrBadToken) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %q, %v; want ErrBadToken mentioning %q", sub, err, c.want)
			}
			if strings.Contains(err.Error(), c.token) && len(c.token) > 10 {
				t.Fatalf("error echoes the token: %v", err)
			}
		})
	}
}

func TestTheUserParameterIsHonouredOnlyInInsecureDevMode(t *testing.T) {
	r := httptest.NewRequest("GET", "/events?user=u1", nil)
	if _, err := auth.NewVerifier(secret, auth.Options{}).Subject(r); !errors.Is(err, auth.ErrNoToken) {
		t.Fatalf("without dev mode: %v, want ErrNoToken", err)
	}
	sub, err := auth.NewVerifier(secret, auth.Options{InsecureDev: true}).Subject(r)
	if err != nil || sub != "u1" {
		t.Fatalf("dev mode: got %q, %v; want u1", sub, err)
	}
}

func TestIssuedTokensVerify(t *testing.T) {
	tok, err := auth.Issue(secret, "u7", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/events", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	if sub, err := auth.NewVerifier(secret, auth.Options{}).Subject(r); err != nil || sub != "u7" {
		t.Fatalf("got %q, %v; want u7", sub, err)
	}
}
