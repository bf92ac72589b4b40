package auth_test

import (
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
)

var verifySecret = []byte("0123456789abcdef0123456789abcdef")

func TestTheUserParameterIsHonouredOnlyInInsecureDevMode(t *testing.T) {
	r := httptest.NewRequest("GET", "/events?user=u1", nil)
	if _, err := auth.NewVerifier(verifySecret, auth.Options{}).Subject(r); !errors.Is(err, auth.ErrNoToken) {
		t.Fatalf("without dev mode: %v, want ErrNoToken", err)
	}
	sub, err := auth.NewVerifier(verifySecret, auth.Options{InsecureDev: true}).Subject(r)
	if err != nil || sub != "u1" {
		t.Fatalf("dev mode: got %q, %v; want u1", sub, err)
	}
}

func TestIssuedTokensVerify(t *testing.T) {
	tok, err := auth.Issue(verifySecret, "u7", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/events", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	if sub, err := auth.NewVerifier(verifySecret, auth.Options{}).Subject(r); err != nil || sub != "u7" {
		t.Fatalf("got %q, %v; want u7", sub, err)
	}
}
