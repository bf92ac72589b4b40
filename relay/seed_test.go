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
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	relays := make([]*relaytest.Relay, 4)
	for i := range relays {
		relays[i] = relaytest.Start(t, db.URL)
	}
	users := []string{"zowi-1", "zowi-2", "zolo-1", "zewi-1", "zelo-1", "zowi-9", "zolo-9"}
	clients := map[string]*relaytest.SSE{}
	for i, u := range users {
		clients[u] = relaytest.Subscribe(t, relays[i%4].URL, relaytest.Token(t, u), relaytest.SSEOptions{})
	}

	relaytest.InsertTemplate(t, db, "t1 berlin by lena", "zolo-1", "loc-1")
	relaytest.InsertTemplate(t, db, "t2 paris by olga", "zowi-1", "loc-2")
	relaytest.InsertTemplate(t, db, "t3 nowhere by emil", "zewi-1")
	relaytest.InsertTemplate(t, db, "t4 rome+berlin by elsa", "zelo-1", "loc-3", "loc-1")
	relaytest.InsertTemplate(t, db, "t5 oslo by ines", "zolo-9", "loc-9")
	relaytest.InsertTemplate(t, db, "t6 oslo by lena", "zolo-1", "loc-9")

	want := map[string][]string{
		"zowi-1": {"t1 berlin by lena", "t3 nowhere by emil", "t4 rome+berlin by elsa", "t6 oslo by lena"},
		"zowi-2": {"t1 berlin by lena", "t2 paris by olga", "t3 nowhere by emil", "t4 rome+berlin by elsa", "t6 oslo by lena"},
		"zolo-1": {"t4 rome+berlin by elsa"},
		"zewi-1": {"t1 berlin by lena", "t2 paris by olga", "t4 rome+berlin by elsa"},
		"zelo-1": {"t2 paris by olga"},
		"zowi-9": {"t5 oslo by ines", "t6 oslo by lena"},
		"zolo-9": {"t6 oslo by lena"},
	}
	for _, u := range users {
		got := names(t, clients[u].Collect(t, len(want[u]), 10*time.Second))
		if !slices.Equal(got, want[u]) {
			t.Errorf("%s received %q, want %q", u, got, want[u])
		}
	}
	for _, u := range users {
		clients[u].Quiet(t, 100*time.Millisecond)
	}
}
