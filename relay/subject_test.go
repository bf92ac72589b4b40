package relay_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

func TestASignedSubWithANULIsRefusedWith401AndSubscribersOpeningWithItAllSucceed(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	exp := time.Now().Add(time.Hour).Unix()
	secret := []byte(relaytest.Secret)
	hostile := []string{
		signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "zowi-1\x00", "exp": exp}),
		signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": "\x00", "exp": exp}),
		signed(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{"sub": strings.Repeat("z", 100_000/16), "exp": exp}),
	}

	// Filters of opening streams are loaded many per query: the hostile
	// tokens arrive in the middle of a crowd of valid ones.
	const rounds = 5
	type result struct {
		who    string
		status int
		msg    string
	}
	results := make(chan result, rounds*(len(relaytest.SeedUsers)+len(hostile)))
	var wg sync.WaitGroup
	for range rounds {
		for _, u := range relaytest.SeedUsers {
			wg.Go(func() {
				status, msg := get(t, r.URL, "", [][2]string{{"Authorization", "Bearer " + relaytest.Token(t, u)}})
				results <- result{u, status, msg}
			})
		}
		for i, tok := range hostile {
			wg.Go(func() {
				status, msg := get(t, r.URL, "", [][2]string{{"Authorization", "Bearer " + tok}})
				results <- result{"hostile-" + string(rune('a'+i)), status, msg}
			})
		}
	}
	wg.Wait()
	close(results)
	for res := range results {
		switch {
		case strings.HasPrefix(res.who, "hostile-") && res.status != http.StatusUnauthorized:
			t.Errorf("%s: got %d %q, want 401", res.who, res.status, res.msg)
		case !strings.HasPrefix(res.who, "hostile-") && res.status != http.StatusOK:
			t.Errorf("%s, opening alongside hostile subs: got %d %q, want 200", res.who, res.status, res.msg)
		}
	}
}
