package relay_test

import (
	"slices"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// names returns the template names of events (see relaytest.TemplateNames).
func names(t *testing.T, events []relaytest.Event) []string {
	t.Helper()
	return relaytest.TemplateNames(t, events)
}

// templateRow is the data of a templates event.
type templateRow = relaytest.TemplateRow

func TestSeedScenarioAcrossFourRelays(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		relays := make([]*relaytest.Relay, 4)
		for i := range relays {
			relays[i] = relaytest.Start(t, db.URL)
		}
		users := relaytest.SeedUsers
		clients := map[string]relaytest.Stream{}
		for i, u := range users {
			clients[u] = tr.Subscribe(t, relays[i%4].URL, relaytest.Token(t, u), relaytest.SSEOptions{})
		}

		want := relaytest.InsertSeedTemplates(t, db)
		for _, u := range users {
			got := names(t, clients[u].Collect(t, len(want[u]), 10*time.Second))
			if !slices.Equal(got, want[u]) {
				t.Errorf("%s received %q, want %q", u, got, want[u])
			}
		}
		for _, u := range users {
			clients[u].Quiet(t, 100*time.Millisecond)
		}
	})
}
