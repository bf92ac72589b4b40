package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
)

func TestResumeOnAnotherRelayDeliversExactlyTheMissedEventsThenLive(t *testing.T) {
	t.Parallel()
	for _, tr := range relaytest.Transports {
		t.Run(tr.Name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			relaytest.Seed(t, db)
			a := relaytest.Start(t, db.URL)
			b := relaytest.Start(t, db.URL)
			token := relaytest.Token(t, "zewi-1")

			first := tr.Subscribe(t, a.URL, token, relaytest.SSEOptions{})
			relaytest.InsertTemplate(t, db, "before", "zolo-1", "loc-1")
			seen := first.Collect(t, 1, 10*time.Second)[0]
			first.Close()

			relaytest.InsertTemplate(t, db, "missed-1", "zolo-1", "loc-1")
			relaytest.InsertTemplate(t, db, "not for zewi", "zolo-9", "loc-9")
			relaytest.InsertTemplate(t, db, "missed-2", "zelo-1", "loc-2")

			second := tr.Subscribe(t, b.URL, token, relaytest.SSEOptions{LastEventID: seen.ID})
			replayed := second.Collect(t, 2, 10*time.Second)
			if got, want := names(t, replayed), []string{"missed-1", "missed-2"}; !slices.Equal(got, want) {
				t.Fatalf("after resume got %q, want %q", got, want)
			}
			relaytest.InsertTemplate(t, db, "live", "zolo-1", "loc-3")
			if got := names(t, second.Collect(t, 1, 10*time.Second)); got[0] != "live" {
				t.Fatalf("live event after replay: got %q, want live", got)
			}
			second.Quiet(t, 200*time.Millisecond)
			if ids := []string{seen.ID, replayed[0].ID, replayed[1].ID}; !slices.IsSorted(ids) {
				t.Errorf("event ids not increasing: %q", ids)
			}
		})
	}
}

func TestResumeWithQueryParameterAndTopicFilter(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	token := relaytest.Token(t, "zowi-1")
	relaytest.InsertTemplate(t, db, "one", "zolo-1", "loc-1")
	relaytest.InsertTemplate(t, db, "two", "zolo-1", "loc-1")

	resp, err := http.Get(r.URL + "/events?topic=templates&last_event_id=0000000000000000-0000000000000000&access_token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	buf := make([]byte, 0, 4096)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(string(buf), "event: templates") < 2 && time.Now().Before(deadline) {
		chunk := make([]byte, 1024)
		n, err := resp.Body.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil {
			break
		}
	}
	body := string(buf)
	if !strings.HasPrefix(body, "retry: ") {
		t.Errorf("stream does not start with a retry hint: %q", body)
	}
	if i, j := strings.Index(body, `"name": "one"`), strings.Index(body, `"name": "two"`); i < 0 || j < i {
		t.Fatalf("want events one then two, got %q", body)
	}
}

func mustIssue(t *testing.T, secret, sub string, ttl time.Duration) string {
	t.Helper()
	tok, err := relayAuthIssue(secret, sub, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestLargeRowsAreDeliveredWhole(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		relaytest.Seed(t, db)
		r := relaytest.Start(t, db.URL)
		pgtest.WaitCapture(t, db, mode)
		c := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})
		for _, size := range []int{20_000, 300_000, 1 << 20} {
			name := strings.Repeat("x", size)
			relaytest.InsertTemplate(t, db, name, "zolo-1", "loc-1")
			got := names(t, c.Collect(t, 1, 10*time.Second))
			if got[0] != name {
				t.Fatalf("row of %d bytes arrived with a name of %d bytes", size, len(got[0]))
			}
		}
	})
}

func TestListenerLossLosesNothing(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		relaytest.Seed(t, db)
		relays := []*relaytest.Relay{relaytest.Start(t, db.URL), relaytest.Start(t, db.URL)}
		pgtest.WaitCapture(t, db, mode)
		users := []string{"zowi-1", "zewi-1", "zolo-1", "zelo-1"}
		clients := map[string]*relaytest.SSE{}
		for i, u := range users {
			clients[u] = relaytest.Subscribe(t, relays[i%2].URL, relaytest.Token(t, u), relaytest.SSEOptions{})
		}

		const producers, perProducer = 4, 60
		creators := []string{"zolo-1", "zelo-1", "zowi-2", "zolo-9"}
		shares := [][]string{{"loc-1"}, {"loc-2"}, {"loc-3"}, {"loc-9"}}
		ctx := context.Background()
		var wg sync.WaitGroup
		for p := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perProducer {
					relaytest.InsertTemplate(t, db, fmt.Sprintf("p%d-%03d", p, i), creators[p], shares[p]...)
				}
			}()
		}
		// Kill every relay's LISTEN backend repeatedly while producers run.
		for range 5 {
			_, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = $1 AND datname = current_database()`, relay.ListenerApplicationName)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Millisecond)
		}
		wg.Wait()
		waitLogHasEveryTemplate(t, db)

		for _, u := range users {
			want := expectedFor(t, db, u)
			got := clients[u].Collect(t, len(want), 20*time.Second)
			gotIDs := make([]string, len(got))
			for i, e := range got {
				gotIDs[i] = e.ID
			}
			if !slices.Equal(gotIDs, want) {
				t.Fatalf("%s: got %d events, want %d; first difference at %d", u, len(gotIDs), len(want), firstDiff(gotIDs, want))
			}
			clients[u].Quiet(t, 100*time.Millisecond)
		}
	})
}

// expectedFor returns, from SQL alone, the ids of the events user should
// receive, in order.
func expectedFor(t *testing.T, db *pgtest.DB, user string) []string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `
SELECT e.xid, e.id FROM relay.events e
 WHERE e.topic = 'templates'
   AND $1 IN (SELECT relay.template_recipients(e.payload->>'id'))
 ORDER BY e.xid, e.id`, user)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id eventlog.ID
		if err := rows.Scan(&id.Xid, &id.Seq); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id.String())
	}
	return ids
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestFilterChangesReachConnectedSubscribersWithinOneSecond(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})

	// zolo-1 listens to loc-1 only; moving it to loc-2 must take effect.
	db.Exec(t, `UPDATE users SET location_id = 'loc-2' WHERE id = 'zolo-1'`)
	waitForKeys(t, r, "zolo-1", "location:loc-2")
	relaytest.InsertTemplate(t, db, "berlin", "zelo-1", "loc-1")
	relaytest.InsertTemplate(t, db, "paris", "zelo-1", "loc-2")
	if got := names(t, c.Collect(t, 1, 5*time.Second)); got[0] != "paris" {
		t.Fatalf("after moving to loc-2 got %q first, want paris", got)
	}

	// Becoming ZEWI widens to every location of the org, including one
	// added afterwards.
	db.Exec(t, `UPDATE users SET user_type = 'ZEWI' WHERE id = 'zolo-1'`)
	db.Exec(t, `INSERT INTO locations (id, org_id, name) VALUES ('loc-4', 'org-1', 'Lima')`)
	waitForKeys(t, r, "zolo-1", "location:loc-4")
	relaytest.InsertTemplate(t, db, "lima", "zelo-1", "loc-4")
	if got := names(t, c.Collect(t, 1, 5*time.Second)); got[0] != "lima" {
		t.Fatalf("after becoming ZEWI got %q, want lima", got)
	}

	// A location moved to another org leaves the org-wide filter. (One
	// with templates in the log, like loc-4 now, may not move at all.)
	db.Exec(t, `INSERT INTO locations (id, org_id, name) VALUES ('loc-5', 'org-1', 'Quito')`)
	waitForKeys(t, r, "zolo-1", "location:loc-5")
	db.Exec(t, `UPDATE locations SET org_id = 'org-2' WHERE id = 'loc-5'`)
	waitForNoKey(t, r, "zolo-1", "location:loc-5")
	relaytest.InsertTemplate(t, db, "quito", "zolo-9", "loc-5")
	c.Quiet(t, 300*time.Millisecond)

	// A deleted subscriber is disconnected.
	db.Exec(t, `DELETE FROM users WHERE id = 'zolo-1'`)
	relaytest.Eventually(t, time.Second, "deleted subscriber disconnected", func() bool {
		return !slices.Contains(r.Server.Hub().Connected(), "zolo-1")
	})
}

// waitForKeys waits (at most one second, the promise) until a subscriber's
// filter on r contains key.
func waitForKeys(t *testing.T, r *relaytest.Relay, sub, key string) {
	t.Helper()
	relaytest.Eventually(t, time.Second, sub+" listens to "+key, func() bool {
		return slices.Contains(r.Server.Hub().Keys(sub)["templates"], key)
	})
}

func waitForNoKey(t *testing.T, r *relaytest.Relay, sub, key string) {
	t.Helper()
	relaytest.Eventually(t, time.Second, sub+" stops listening to "+key, func() bool {
		return !slices.Contains(r.Server.Hub().Keys(sub)["templates"], key)
	})
}
