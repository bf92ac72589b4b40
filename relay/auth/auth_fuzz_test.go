package auth_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
)

const secret = "fuzz-secret-0123456789abcdef"

// FuzzVerify feeds arbitrary strings as tokens. Verification must never
// panic, every rejection must be ErrBadToken (a 401), and anything accepted
// must be an HS256 token with a subject: a fuzzer cannot forge the
// signature, so an acceptance of anything else is a hole.
func FuzzVerify(f *testing.F) {
	valid, err := auth.Issue([]byte(secret), "zowi-1", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ6b3dpLTEifQ.")
	f.Add(strings.Repeat("A", 9000))
	f.Add(valid[:len(valid)-2] + "xx")
	f.Add(strings.Replace(valid, ".", "..", 1))
	v := auth.NewVerifier([]byte(secret), auth.Options{})
	f.Fuzz(func(t *testing.T, token string) {
		sub, err := v.Verify(token)
		if err != nil {
			if !errors.Is(err, auth.ErrBadToken) {
				t.Fatalf("rejection %v is not ErrBadToken", err)
			}
			if token != "" && len(token) > 12 && strings.Contains(err.Error(), token) {
				t.Fatalf("error echoes the token: %v", err)
			}
			return
		}
		if sub == "" {
			t.Fatalf("accepted a token without a subject")
		}
		header, _, _ := strings.Cut(token, ".")
		raw, err := base64.RawURLEncoding.DecodeString(header)
		if err != nil {
			t.Fatalf("accepted a token whose header is not base64url: %q", header)
		}
		var h struct {
			Alg string `json:"alg"`
		}
		if err := json.Unmarshal(raw, &h); err != nil || h.Alg != "HS256" {
			t.Fatalf("accepted a token with header %s", raw)
		}
	})
}

// FuzzSubject feeds arbitrary Authorization headers and query strings to
// request authentication: never a panic, only ErrNoToken or ErrBadToken,
// and never the insecure ?user= shortcut on a relay not in dev mode.
func FuzzSubject(f *testing.F) {
	f.Add("", "user=zowi-1")
	f.Add("Bearer", "")
	f.Add("Bearer ", "access_token=")
	f.Add("bearer x.y.z", "")
	f.Add("Basic dXNlcjpwYXNz", "access_token=a.b.c&user=zowi-1")
	f.Add("Bearer \x00", "access_token=%00")
	v := auth.NewVerifier([]byte(secret), auth.Options{})
	f.Fuzz(func(t *testing.T, authorization, rawQuery string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/events", RawQuery: rawQuery}, Header: http.Header{}}
		if authorization != "" {
			r.Header["Authorization"] = []string{authorization}
		}
		sub, err := v.Subject(r)
		if err == nil {
			t.Fatalf("authenticated %q without a valid token (Authorization %q, query %q)", sub, authorization, rawQuery)
		}
		if !errors.Is(err, auth.ErrNoToken) && !errors.Is(err, auth.ErrBadToken) {
			t.Fatalf("rejection %v is neither ErrNoToken nor ErrBadToken", err)
		}
	})
}
