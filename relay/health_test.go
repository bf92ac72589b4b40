package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/seal"
)

// getJSON fetches u, whose body must be a JSON object.
func getJSON(t *testing.T, u string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: body is not JSON: %v", u, err)
	}
	return resp.StatusCode, body
}

func status(t *testing.T, u string) int {
	t.Helper()
	code, _ := getJSON(t, u)
	return code
}

// listenerRole creates a login role for a relay's LISTEN (and sequencer)
// connections, so the test can stop them from reconnecting: roles are
// cluster-wide, hence the random name and the cleanup.
func listenerRole(t *testing.T, db *pgtest.DB) (name, url string) {
	t.Helper()
	name = "pgrelay_listener_" + strings.TrimPrefix(db.Name, "pgrelay_test_")
	db.Exec(t, "CREATE ROLE "+pgx.Identifier{name}.Sanitize()+" LOGIN SUPERUSER")
	t.Cleanup(func() {
		admin, err := pgx.Connect(context.Background(), db.URL)
		if err != nil {
			t.Errorf("connect to drop role %s: %v", name, err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Errorf("drop role %s: %v", name, err)
		}
	})
	cfg, err := pgtest.AdminConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = name
	return name, pgtest.URLFor(cfg, db.Name)
}

func templateNames(t *testing.T, events []relaytest.Event) []string {
	t.Helper()
	return names(t, events)
}

func TestReadyzFlipsWhileTheListenerIsDownAndEventsFromThatTimeArriveOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	role, listenURL := listenerRole(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.ListenDatabaseURL = listenURL
		// No periodic read: events inserted while the listener is down must
		// come from the catch-up that follows its reconnect.
		c.SafetyPoll = time.Hour
	})
	if got := status(t, r.URL+"/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz = %d on a fresh relay, want 200", got)
	}
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "before", "zowi-1", "loc-1")
	client.Collect(t, 1, settle)

	// Keep the listener out, then cut it off.
	db.Exec(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" NOLOGIN")
	var killed int
	if err := db.Pool.QueryRow(context.Background(), `
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE application_name = 'pgrelay-listener' AND datname = current_database()`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listener backends, want 1", killed)
	}
	relaytest.Eventually(t, 10*time.Second, "/readyz 503", func() bool { return status(t, r.URL+"/readyz") == http.StatusServiceUnavailable })
	if got := status(t, r.URL+"/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d while the listener is down, want 200 (the process is alive)", got)
	}
	// The sequencer's announcements of these events must be sent while the
	// listener is out, or the relay would receive them inside a
	// notification rather than miss them.
	announced := announcements(t, db)
	for i := range 3 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("while down %d", i), "zowi-1", "loc-1")
	}
	var newest int64
	if err := db.Pool.QueryRow(context.Background(), "SELECT max(id) FROM relay.events").Scan(&newest); err != nil {
		t.Fatal(err)
	}
	announced.waitFor(t, newest)
	if got := status(t, r.URL+"/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while the listener still cannot connect, want 503", got)
	}

	db.Exec(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN")
	relaytest.Eventually(t, settle, "/readyz 200 again", func() bool { return status(t, r.URL+"/readyz") == http.StatusOK })
	relaytest.InsertTemplate(t, db, "after", "zowi-1", "loc-1")

	got := templateNames(t, client.Collect(t, 4, settle))
	want := []string{"while down 0", "while down 1", "while down 2", "after"}
	if !slices.Equal(got, want) {
		t.Errorf("received %q, want %q", got, want)
	}
	client.Quiet(t, 300*time.Millisecond)
	if rc := sample(scrape(t, r.URL), "pgrelay_listener_reconnects_total"); rc < 1 {
		t.Errorf("pgrelay_listener_reconnects_total = %v after a reconnect", rc)
	}
	if n := sample(scrape(t, r.URL), "pgrelay_catchup_events_total"); n < 3 {
		t.Errorf("pgrelay_catchup_events_total = %v, want at least the 3 events missed", n)
	}
}

// announcementWatch listens to the sequencer's channel on its own connection
// and opens what it hears with the database's key.
type announcementWatch struct {
	conn *pgx.Conn
	key  *seal.Key
}

func announcements(t *testing.T, db *pgtest.DB) announcementWatch {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(context.Background(), "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}
	key, err := seal.Load(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return announcementWatch{conn, key}
}

// waitFor returns once an announcement reaches log position seq.
func (w announcementWatch) waitFor(t *testing.T, seq int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		n, err := w.conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("waiting for the sequencer to announce event %d: %v", seq, err)
		}
		plain, err := w.key.Open(eventlog.AnnounceChannel, n.PID, n.Payload)
		if err != nil {
			t.Fatalf("an announcement that does not open with the key: %v", err)
		}
		if a, err := eventlog.DecodeAnnouncement(plain); err == nil && a.Upto.Seq >= seq {
			return
		}
	}
}
