package relay_test

// Reconnect storms: the opens a relay lets work or wait at once are bounded
// (--max-opening, --open-concurrency); a burst beyond the bound is refused
// at once with 503 and Retry-After (close 1013 on GraphQL), streams already
// open keep receiving live events meanwhile, and a refused client that
// comes back with its Last-Event-ID gets everything after it, once.
//
// The opens are held in progress by the database itself (stallFilterLoads):
// filter loads wait on a lock the test holds, and nothing else does —
// inserts and the log reader are never in its way.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/streamclient"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/graphql"
)

// stormWait bounds the waits of these tests: generous, for a loaded
// machine; a refusal that is not immediate still shows as one far below it.
const stormWait = 20 * time.Second

// boundedOpening is a relay that lets one resuming stream replay at a time
// and two streams open at once in all (for longer than any test lasts, so
// that a waiter is never refused for having waited). It keeps no window of
// the recent log, so that every replay reads the log and takes a turn.
func boundedOpening(c *relay.Config) {
	c.MaxOpening, c.OpenConcurrency, c.OpenWait = 2, 1, time.Minute
	c.ReplayCacheBytes = 0
}

// stallFilterLoads makes every filter load of db's relays wait until the
// returned function is called. Subscribers are read from a view of users
// that first takes a shared advisory lock the test holds exclusively: a
// session's advisory lock, unlike a table lock, gives the test no
// transaction id, so it holds back no event of the log (the relay delivers
// events only once every transaction older than them has ended).
func stallFilterLoads(t *testing.T, db *pgtest.DB) (resume func()) {
	t.Helper()
	ctx := context.Background()
	db.Exec(t, `
CREATE FUNCTION public.filter_gate() RETURNS boolean LANGUAGE sql VOLATILE
    AS $$ SELECT pg_advisory_xact_lock_shared(7, 7); SELECT true $$;
CREATE VIEW public.gated_users AS SELECT * FROM public.users WHERE public.filter_gate();
SELECT relay.set_subscriber_source('public.gated_users', 'id');`)
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatalf("stall filter loads: %v", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7, 7)`); err != nil {
		conn.Release()
		t.Fatalf("stall filter loads: %v", err)
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(7, 7)`); err != nil {
				t.Errorf("resume filter loads: %v", err)
			}
			conn.Release()
		})
	}
	t.Cleanup(resume)
	return resume
}

// opensInProgress waits until r's gauges show working streams opening and
// waiting ones waiting for their turn.
func opensInProgress(t *testing.T, r *relaytest.Relay, working, waiting int) {
	t.Helper()
	relaytest.Eventually(t, stormWait, strconv.Itoa(working)+" opens working and "+strconv.Itoa(waiting)+" waiting", func() bool {
		m := scrape(t, r.URL)
		return sample(m, "pgrelay_stream_opens_working") == float64(working) &&
			sample(m, "pgrelay_stream_opens_waiting") == float64(waiting)
	})
}

// refusalsCounted reads how many refusals of transport r counted for reason.
func refusalsCounted(t *testing.T, r *relaytest.Relay, transport, reason string) float64 {
	t.Helper()
	return sample(scrape(t, r.URL), "pgrelay_stream_refusals_total", "transport", transport, "reason", reason)
}

// openInBackground opens a stream that will wait for its turn, and returns
// where the outcome arrives; the stream is closed when the test ends.
func openInBackground(t *testing.T, tr relaytest.Transport, base string, opts streamclient.Options) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stormWait)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer cancel()
		st, err := tr.Open(ctx, nil, base, opts)
		if err == nil {
			st.Close()
		}
		done <- err
	}()
	t.Cleanup(func() { <-finished })
	return done
}

func TestABurstOfOpensBeyondTheBoundIsRefusedAtOnceAndRetriesGetEverythingAfterTheirLastIDOnce(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL, boundedOpening)
		live := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
		// Every subscriber here receives the templates of zowi-2 shared
		// with loc-1: zowi-1 as an owner of the org, zewi-1 as its editor,
		// zolo-1 at loc-1.
		relaytest.InsertTemplate(t, db, "t1 before the storm", "zowi-2", "loc-1")
		lastSeen := live.Collect(t, 1, stormWait)[0].ID

		resume := stallFilterLoads(t, db)
		resuming := streamclient.Options{Token: relaytest.Token(t, "zolo-1"), LastEventID: lastSeen}
		working := openInBackground(t, tr, r.URL, resuming)
		opensInProgress(t, r, 1, 0)
		waiting := openInBackground(t, tr, r.URL, resuming)
		opensInProgress(t, r, 1, 1)

		const burst = 8
		refusedBefore := refusalsCounted(t, r, tr.Name, "busy")
		var wg sync.WaitGroup
		answers := make([]error, burst)
		took := make([]time.Duration, burst)
		for i := range burst {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), stormWait)
				defer cancel()
				start := time.Now()
				st, err := tr.Open(ctx, nil, r.URL, streamclient.Options{Token: relaytest.Token(t, "zewi-1"), LastEventID: lastSeen})
				took[i] = time.Since(start)
				if err == nil {
					st.Close()
				}
				answers[i] = err
			})
		}
		// The stream already open is served while the burst is refused.
		relaytest.InsertTemplate(t, db, "t2 during the storm", "zowi-2", "loc-1")
		if got := relaytest.TemplateNames(t, live.Collect(t, 1, stormWait)); !slices.Equal(got, []string{"t2 during the storm"}) {
			t.Errorf("the open stream received %q during the burst, want t2", got)
		}
		wg.Wait()
		for i, err := range answers {
			status, msg := relaytest.Refused(t, err)
			var rej *streamclient.RejectedError
			errors.As(err, &rej)
			if status != http.StatusServiceUnavailable || !strings.Contains(msg, "busy") {
				t.Errorf("open %d of the burst: %d %q, want 503 saying the relay is busy", i, status, msg)
			}
			if s, err := strconv.Atoi(rej.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Errorf("open %d of the burst: Retry-After %q, want whole seconds, at least 1", i, rej.Header.Get("Retry-After"))
			}
		}
		t.Logf("the slowest refusal of the burst took %s", slices.Max(took))
		if got := refusalsCounted(t, r, tr.Name, "busy") - max(refusedBefore, 0); got != burst {
			t.Errorf("pgrelay_stream_refusals_total{transport=%q,reason=\"busy\"} grew by %v, want %d", tr.Name, got, burst)
		}

		// Once the work moves on, the opens that had their turn or waited
		// for it are served, and the refused client comes back.
		resume()
		for _, done := range []<-chan error{working, waiting} {
			if err := <-done; err != nil {
				t.Errorf("an open admitted before the burst: %v", err)
			}
		}
		back := tr.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{LastEventID: lastSeen})
		relaytest.InsertTemplate(t, db, "t3 after the storm", "zowi-2", "loc-1")
		if got := relaytest.TemplateNames(t, back.Collect(t, 2, stormWait)); !slices.Equal(got, []string{"t2 during the storm", "t3 after the storm"}) {
			t.Errorf("the refused client, back after %s: got %q, want t2 (replayed) then t3 (live)", lastSeen, got)
		}
		if got := relaytest.TemplateNames(t, live.Collect(t, 1, stormWait)); !slices.Equal(got, []string{"t3 after the storm"}) {
			t.Errorf("the open stream received %q after the burst, want t3", got)
		}
		back.Quiet(t, 300*time.Millisecond)
		live.Quiet(t, 300*time.Millisecond)
	})
}

// graphqlConn is a graphql-transport-ws connection spoken by hand.
type graphqlConn struct {
	conn *websocket.Conn
}

func dialGraphQL(t *testing.T, base string) *graphqlConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stormWait)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{graphql.TransportWS}})
	if err != nil {
		t.Fatalf("dial /graphql: %v", err)
	}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return &graphqlConn{conn: conn}
}

func (c *graphqlConn) send(t *testing.T, m map[string]any) {
	t.Helper()
	b, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(context.Background(), stormWait)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("send %s: %v", m["type"], err)
	}
}

// next returns the next message other than a keep-alive, or the close
// code and reason.
func (c *graphqlConn) next(t *testing.T) (msg map[string]any, code websocket.StatusCode, reason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stormWait)
	defer cancel()
	for {
		_, b, err := c.conn.Read(ctx)
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return nil, ce.Code, ce.Reason
		}
		if err != nil {
			t.Fatalf("read from /graphql: %v", err)
		}
		msg = nil
		if err := json.Unmarshal(b, &msg); err != nil {
			t.Fatalf("message %q: %v", b, err)
		}
		if msg["type"] != "ping" && msg["type"] != "pong" {
			return msg, 0, ""
		}
	}
}

func TestABurstOfGraphQLConnectionsAndSubscriptionsBeyondTheBoundIsRefusedAtOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, boundedOpening)
	initFor := func(sub string) map[string]any {
		return map[string]any{"type": "connection_init", "payload": map[string]any{"authorization": "Bearer " + relaytest.Token(t, sub)}}
	}
	acked := dialGraphQL(t, r.URL)
	acked.send(t, initFor("zowi-1"))
	if msg, code, reason := acked.next(t); msg["type"] != "connection_ack" {
		t.Fatalf("connection before the storm: %v (close %d %q), want connection_ack", msg, code, reason)
	}

	resume := stallFilterLoads(t, db)
	// A connection_init loads the subscriber's filter too: it counts
	// toward the bound like a fresh stream (no turn: it replays nothing).
	holders := []*graphqlConn{dialGraphQL(t, r.URL), dialGraphQL(t, r.URL)}
	holders[0].send(t, initFor("zolo-1"))
	opensInProgress(t, r, 1, 0)
	holders[1].send(t, initFor("zolo-1"))
	opensInProgress(t, r, 2, 0)

	const burst = 4
	for i := range burst {
		c := dialGraphQL(t, r.URL)
		c.send(t, initFor("zewi-1"))
		if msg, code, reason := c.next(t); code != graphql.CloseTryAgainLater || !strings.Contains(reason, "busy") {
			t.Errorf("connection %d of the burst: %v, close %d %q; want close %d saying the relay is busy", i, msg, code, reason, graphql.CloseTryAgainLater)
		}
	}
	acked.send(t, map[string]any{"id": "1", "type": "subscribe", "payload": map[string]any{"query": seedSubscription}})
	msg, code, reason := acked.next(t)
	if msg["type"] != "error" || !strings.Contains(string(mustMarshal(t, msg["payload"])), "busy") {
		t.Errorf("a subscription during the burst: %v (close %d %q), want an error saying the relay is busy", msg, code, reason)
	}
	if got := refusalsCounted(t, r, "graphql", "busy"); got != burst+1 {
		t.Errorf("pgrelay_stream_refusals_total{transport=\"graphql\",reason=\"busy\"} = %v, want %d", got, burst+1)
	}

	resume()
	for i, c := range holders {
		if msg, code, reason := c.next(t); msg["type"] != "connection_ack" {
			t.Errorf("connection %d admitted before the burst: %v (close %d %q), want connection_ack", i, msg, code, reason)
		}
	}
	acked.send(t, map[string]any{"id": "2", "type": "subscribe", "payload": map[string]any{"query": seedSubscription}})
	subscriptionsOpen(t, []*relaytest.Relay{r}, 1)
	relaytest.InsertTemplate(t, db, "after the storm", "zowi-2", "loc-1")
	if msg, _, _ := acked.next(t); msg["type"] != "next" || msg["id"] != "2" {
		t.Errorf("the subscription retried after the burst got %v, want its next", msg)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAnOpenThatWaitsLongerThanOpenWaitForItsTurnGets503AndRetryAfter(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL, func(c *relay.Config) {
			c.MaxOpening, c.OpenConcurrency, c.OpenWait = 0, 1, 300*time.Millisecond
			c.ReplayCacheBytes = 0
		})
		// Resuming streams: only a replay from the log takes a turn.
		live := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
		relaytest.InsertTemplate(t, db, "t1 before the storm", "zowi-2", "loc-1")
		lastSeen := live.Collect(t, 1, stormWait)[0].ID
		resume := stallFilterLoads(t, db)
		working := openInBackground(t, tr, r.URL, streamclient.Options{Token: relaytest.Token(t, "zolo-1"), LastEventID: lastSeen})
		opensInProgress(t, r, 1, 0)
		ctx, cancel := context.WithTimeout(context.Background(), stormWait)
		defer cancel()
		start := time.Now()
		_, err := tr.Open(ctx, nil, r.URL, streamclient.Options{Token: relaytest.Token(t, "zewi-1"), LastEventID: lastSeen})
		waited := time.Since(start)
		status, msg := relaytest.Refused(t, err)
		var rej *streamclient.RejectedError
		errors.As(err, &rej)
		if status != http.StatusServiceUnavailable || !strings.Contains(msg, "busy") || rej.Header.Get("Retry-After") == "" {
			t.Errorf("an open that waited its turn in vain: %d %q, Retry-After %q; want 503 saying the relay is busy, with Retry-After",
				status, msg, rej.Header.Get("Retry-After"))
		}
		if waited < 300*time.Millisecond {
			t.Errorf("refused after %s, before its --open-wait of 300ms", waited)
		}
		resume()
		if err := <-working; err != nil {
			t.Errorf("the open that had its turn: %v", err)
		}
	})
}

func TestAStreamResumingFromTheWindowOfTheRecentLogTakesNoTurnFromThoseThatReadTheLog(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		// Two events before the relay starts: a resume from the first
		// needs the second, which only the log holds.
		relaytest.InsertTemplate(t, db, "t0 before the relay", "zowi-2", "loc-1")
		relaytest.InsertTemplate(t, db, "t1 before the relay", "zowi-2", "loc-1")
		var fromLog eventlog.ID
		if err := db.Pool.QueryRow(context.Background(),
			`SELECT xid, id FROM relay.events ORDER BY xid, id LIMIT 1`).Scan(&fromLog.Xid, &fromLog.Seq); err != nil {
			t.Fatal(err)
		}
		r := relaytest.Start(t, db.URL, func(c *relay.Config) {
			c.MaxOpening, c.OpenConcurrency, c.OpenWait = 0, 1, 300*time.Millisecond
		})
		live := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
		relaytest.InsertTemplate(t, db, "t2 while the relay runs", "zowi-2", "loc-1")
		fromWindow := live.Collect(t, 1, stormWait)[0].ID

		resume := stallFilterLoads(t, db)
		logReplay := openInBackground(t, tr, r.URL, streamclient.Options{Token: relaytest.Token(t, "zolo-1"), LastEventID: fromLog.String()})
		opensInProgress(t, r, 1, 0)
		// The only turn is taken; a resume from the window opens beside it.
		windowReplay := openInBackground(t, tr, r.URL, streamclient.Options{Token: relaytest.Token(t, "zewi-1"), LastEventID: fromWindow})
		opensInProgress(t, r, 2, 0)
		// Another resume from the log waits for the turn, in vain.
		_, err := tr.Open(context.Background(), nil, r.URL, streamclient.Options{Token: relaytest.Token(t, "zewi-1"), LastEventID: fromLog.String()})
		if status, msg := relaytest.Refused(t, err); status != http.StatusServiceUnavailable || !strings.Contains(msg, "busy") {
			t.Errorf("a second resume from the log while the turn was taken: %d %q, want 503 busy", status, msg)
		}
		resume()
		for name, done := range map[string]<-chan error{"from the log": logReplay, "from the window": windowReplay} {
			if err := <-done; err != nil {
				t.Errorf("the resume %s: %v", name, err)
			}
		}
	})
}

func TestLoadingAFewSubscribersFiltersReadsTheirOwnRowsNotTheWholeUsersTable(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// A storm loads the filters of a few resuming subscribers at a time:
	// with many users, each load must cost a few index lookups.
	db.Exec(t, `
INSERT INTO public.users (id, name, user_type, org_id, location_id)
SELECT 'many-' || i, 'user ' || i, 'ZOLO', 'org-1', 'loc-1' FROM generate_series(1, 20000) AS i;
ANALYZE public.users; ANALYZE public.locations;`)
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var keys []string
	if err := tx.QueryRow(ctx, `SELECT array_agg(coalesce(key, '(exists)') ORDER BY key) FROM relay.filters(ARRAY['zolo-1', 'zewi-1', 'zowi-1'])`).Scan(&keys); err != nil {
		t.Fatal(err)
	}
	if len(keys) < 3 {
		t.Fatalf("filters of zolo-1, zewi-1 and zowi-1: %v, want their keys", keys)
	}
	// This transaction's own counts: exact, and nobody else's.
	var seqScans, tupRead int64
	if err := tx.QueryRow(ctx, `SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE relid = 'public.users'::regclass`).Scan(&seqScans, &tupRead); err != nil {
		t.Fatal(err)
	}
	if seqScans != 0 {
		t.Errorf("loading 3 subscribers' filters scanned public.users %d times (%d rows read), want index lookups only", seqScans, tupRead)
	}
}
