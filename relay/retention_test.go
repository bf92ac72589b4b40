package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/retention"
)

func eventCount(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM relay.events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestResumeFromBeforeTheRetentionHorizonGetsResetThenLiveEvents(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	for i := range 3 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("old %d", i), "zowi-1", "loc-1")
	}
	seen := client.Collect(t, 3, settle)
	client.Close()

	db.Exec(t, `UPDATE relay.events SET created_at = now() - interval '2 hours'`)
	relaytest.Eventually(t, settle, "old events pruned", func() bool {
		if _, err := retention.Prune(context.Background(), db.Pool, time.Hour, 0, 2); err != nil {
			t.Fatal(err)
		}
		return eventCount(t, db) == 0
	})
	h, err := eventlog.Horizon(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if h.String() != seen[2].ID {
		t.Fatalf("horizon %s, want the last pruned event %s", h, seen[2].ID)
	}

	// From before the horizon: the events after that id are gone.
	stale := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{LastEventID: seen[0].ID})
	// From the horizon itself: nothing after it was pruned, no reset.
	current := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{LastEventID: seen[2].ID})
	relaytest.InsertTemplate(t, db, "live", "zowi-1", "loc-1")

	got := stale.Collect(t, 2, settle)
	if got[0].Event != "reset" {
		t.Fatalf("first event after resuming from before the horizon: %+v, want event: reset", got[0])
	}
	if names(t, got[1:])[0] != "live" {
		t.Errorf("after the reset: %+v, want the live event", got[1])
	}
	if got[1].ID <= got[0].ID {
		t.Errorf("live event id %s not after the reset's id %s", got[1].ID, got[0].ID)
	}
	if n := names(t, current.Collect(t, 1, settle)); n[0] != "live" {
		t.Errorf("resume from the horizon got %q first, want live (no reset)", n)
	}
	stale.Quiet(t, 200*time.Millisecond)
	current.Quiet(t, 100*time.Millisecond)
}

func TestTheSequencerPrunesTheLogOnSchedule(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	mutate := func(c *relay.Config) {
		c.RetentionMaxEvents = 3
		c.RetentionInterval = 50 * time.Millisecond
	}
	// As the relay's role of docs/roles.sql: its grants must be enough to
	// prune.
	roles := pgtest.WithRoles(t, db)
	relays := []*relaytest.Relay{relaytest.Start(t, roles.RelayURL, mutate), relaytest.Start(t, roles.RelayURL, mutate)}
	for i := range 10 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("t%d", i), "zowi-1", "loc-1")
	}
	relaytest.Eventually(t, settle, "log pruned to 3 events", func() bool { return eventCount(t, db) == 3 })
	total := func(name string) float64 {
		sum := 0.0
		for _, r := range relays {
			sum += sample(scrape(t, r.URL), name)
		}
		return sum
	}
	// The metric follows the commit of the last batch.
	relaytest.Eventually(t, settle, "prunes counted", func() bool { return total("pgrelay_pruned_events_total") >= 7 })
	if pruned := total("pgrelay_pruned_events_total"); pruned != 7 {
		t.Errorf("relays report %v events pruned in all, want 7 (one pruner, no double counting)", pruned)
	}
	leaders := total("pgrelay_sequencer_leader")
	if leaders != 1 {
		t.Errorf("%v relays are sequencer, want exactly 1", leaders)
	}
}
