package relay_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// openForeignTransaction starts a write transaction in a database of its
// own on the same server and keeps it open until the test ends. Its xid is
// older than every event the test writes afterwards.
func openForeignTransaction(t *testing.T) {
	t.Helper()
	other := pgtest.New(t)
	conn, err := pgx.Connect(context.Background(), other.URL)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var xid int64
	if err := tx.QueryRow(context.Background(), "SELECT txid_current()").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tx.Rollback(context.Background())
		_ = conn.Close(context.Background())
	})
}

// A relay reads the log up to where the sequencer vouched that it is
// settled, whatever its own, possibly older, list of other databases'
// transactions says; and after its listener was away it looks that list up
// afresh, so what it missed arrives without waiting for the safety poll.
func TestEventsArriveWhileThisRelayCountsAnotherDatabasesTransactionAsItsOwn(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	sequencer := relaytest.Start(t, db.URL)
	relaytest.Eventually(t, 10*time.Second, "first relay is the sequencer", func() bool {
		return readyz(t, sequencer.URL)["sequencer"] == true
	})
	role, listenURL := listenerRole(t, db)
	lagging := relaytest.Start(t, db.URL, relay.WithForeignListAge(time.Hour), func(c *relay.Config) {
		c.ListenDatabaseURL = listenURL
		c.SafetyPoll = time.Hour
	})
	client := relaytest.Subscribe(t, lagging.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})

	// Begun after the lagging relay listed other databases' transactions:
	// to it, this one holds the horizon back until it looks again.
	openForeignTransaction(t)

	// Too large to travel inside the announcement: the relay reads the log.
	announced := strings.Repeat("a", 20_000)
	relaytest.InsertTemplate(t, db, announced, "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 10*time.Second)); got[0] != announced {
		t.Fatalf("received a template named %.20q…, want the announced one", got[0])
	}

	// Keep the lagging relay's listener out while an event is announced,
	// then let it back in: its catch-up read must not trust the old list.
	db.Exec(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" NOLOGIN")
	if killed := terminateRole(t, db, role); killed < 1 {
		t.Fatalf("terminated %d sessions of the lagging relay's listener role, want at least 1", killed)
	}
	relaytest.Eventually(t, 10*time.Second, "lagging relay not ready", func() bool {
		return readyz(t, lagging.URL)["listening"] == false
	})
	watch := announcements(t, db)
	missed := strings.Repeat("m", 20_000)
	relaytest.InsertTemplate(t, db, missed, "zowi-1", "loc-1")
	var newest int64
	if err := db.Pool.QueryRow(context.Background(), "SELECT max(id) FROM relay.events").Scan(&newest); err != nil {
		t.Fatal(err)
	}
	watch.waitFor(t, newest)
	db.Exec(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN")
	got := names(t, client.Collect(t, 1, 10*time.Second))
	if !slices.Equal(got, []string{missed}) {
		t.Fatalf("after the listener returned, received %d templates, want the one announced while it was away", len(got))
	}
	client.Quiet(t, 300*time.Millisecond)
}

// readyz returns a relay's /readyz body.
func readyz(t *testing.T, baseURL string) map[string]any {
	t.Helper()
	_, body := getJSON(t, baseURL+"/readyz")
	return body
}

// terminateRole ends every session of role in the test database.
func terminateRole(t *testing.T, db *pgtest.DB, role string) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND usename = $1`, role).Scan(&n); err != nil {
		t.Fatalf("terminate sessions of %s: %v", role, err)
	}
	return n
}
