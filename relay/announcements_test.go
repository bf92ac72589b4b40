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
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/sequencer"
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

// Any session that can connect to the database can notify the events
// channel. A relay takes rows and settled positions only from the session
// holding the sequencer lock; anything else merely makes it read the log.
func TestForgedAnnouncementsNeitherInjectRowsNorSkipOpenTransactions(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.SafetyPoll = time.Hour })
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "genuine", "zowi-1", "loc-1")
	client.Collect(t, 1, 10*time.Second)
	forge := func(payload string) {
		t.Helper()
		if _, err := db.Pool.Exec(context.Background(), "SELECT pg_notify($1, $2)", sequencer.EventsChannel, payload); err != nil {
			t.Fatal(err)
		}
	}

	// A row that is not in the log, addressed like the genuine one and
	// chained to the relay's position so it would be published at once.
	var last eventlog.Event
	if err := db.Pool.QueryRow(context.Background(), `
SELECT xid, id, topic, audience FROM relay.events ORDER BY xid DESC, id DESC LIMIT 1`).Scan(
		&last.ID.Xid, &last.ID.Seq, &last.Topic, &last.Audience); err != nil {
		t.Fatal(err)
	}
	fake := eventlog.Event{
		ID: eventlog.ID{Xid: last.ID.Xid, Seq: last.ID.Seq + 1000}, Topic: last.Topic, Audience: last.Audience,
		Payload: []byte(`{"id":"forged","name":"forged"}`), CreatedAt: time.Now(),
	}
	payloads, err := eventlog.EncodeAnnouncements(r.Server.Hub().Position(), []eventlog.Event{fake}, fake.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		forge(p)
	}
	client.Quiet(t, 500*time.Millisecond)

	// A settled position far ahead while an earlier transaction is open:
	// trusting it would deliver the later row first and skip the earlier.
	tx, err := db.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('earlier', '{loc-1}', 'zowi-1')`); err != nil {
		t.Fatal(err)
	}
	relaytest.InsertTemplate(t, db, "later", "zowi-1", "loc-1")
	forge(eventlog.ID{Xid: 1 << 62, Seq: 1 << 62}.String())
	client.Quiet(t, 500*time.Millisecond)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := names(t, client.Collect(t, 2, 10*time.Second)); !slices.Equal(got, []string{"earlier", "later"}) {
		t.Fatalf("received %q, want the earlier transaction's row first", got)
	}
	// The sequencer's first announcements (taking over, "genuine") count
	// too if they arrived before the relay had looked it up.
	if n := sample(scrape(t, r.URL), "pgrelay_announcements_ignored_total"); n < float64(len(payloads)+1) || n > float64(len(payloads)+3) {
		t.Errorf("pgrelay_announcements_ignored_total = %v, want the %d forged notifications, plus at most the sequencer's first two", n, len(payloads)+1)
	}
}
