package sequencer_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/seal"
	"github.com/pgrelay/pgrelay/relay/sequencer"
)

var cfg = sequencer.Config{Poll: 2 * time.Millisecond, IdleAfter: time.Second, IdlePoll: 50 * time.Millisecond, Retry: 20 * time.Millisecond}

type candidate struct {
	leading atomic.Bool
	cancel  context.CancelFunc
	done    chan error
}

// run starts a sequencer candidate connecting to url.
func run(t *testing.T, url string, key *seal.Key) *candidate {
	t.Helper()
	return runWith(t, url, key, cfg)
}

// runWith starts a sequencer candidate with config c0.
func runWith(t *testing.T, url string, key *seal.Key, c0 sequencer.Config) *candidate {
	t.Helper()
	connect := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) }
	c := &candidate{done: make(chan error, 1)}
	withHooks := c0
	withHooks.OnLeader = c.leading.Store
	s := sequencer.New(connect, key, withHooks, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() { c.done <- s.Run(ctx) }()
	t.Cleanup(c.stop)
	return c
}

func (c *candidate) stop() {
	c.cancel()
	<-c.done
	c.done <- nil // later stops return at once
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func leaders(cs ...*candidate) int {
	n := 0
	for _, c := range cs {
		if c.leading.Load() {
			n++
		}
	}
	return n
}

// leader is the candidate that says it leads (the last one, if several do).
func leader(cs ...*candidate) *candidate {
	var l *candidate
	for _, c := range cs {
		if c.leading.Load() {
			l = c
		}
	}
	return l
}

func holder(t *testing.T, db *pgtest.DB) (pid int32) {
	t.Helper()
	if err := db.Pool.QueryRow(context.Background(), "SELECT coalesce(holder_pid, 0) FROM relay.sequencer").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestOneCandidateLeadsAndAnotherTakesOverWhenItsSessionEnds(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key, err := seal.Load(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := run(t, db.URL, key), run(t, db.URL, key), run(t, db.URL, key)
	eventually(t, "one leader", func() bool { return leaders(a, b, c) == 1 })
	time.Sleep(100 * time.Millisecond) // several election rounds
	if n := leaders(a, b, c); n != 1 {
		t.Fatalf("%d candidates lead at once, want 1", n)
	}

	// The leader's session is killed: another one takes over. The old
	// leader learns of its loss only on its next query, and the new one
	// says so only after its claim is committed, so the wait is for both.
	old := leader(a, b, c)
	first := holder(t, db)
	db.Exec(t, "SELECT pg_terminate_backend($1)", first)
	eventually(t, "a new leader in another session", func() bool {
		return !old.leading.Load() && leaders(a, b, c) == 1 && holder(t, db) != first && holder(t, db) != 0
	})

	// A clean stop hands the role over at once: the row names nobody until
	// the next candidate claims it.
	stopped := leader(a, b, c)
	second := holder(t, db)
	stopped.stop()
	eventually(t, "the last candidate leads", func() bool { return leaders(a, b, c) == 1 && holder(t, db) != second })
}

func TestASequencerWhoseRoleWasTakenStopsLeading(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key, err := seal.Load(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	a := run(t, db.URL, key)
	eventually(t, "a leads", a.leading.Load)
	// The owner hands the role to a session that is alive (this test's
	// pool connection): the sequencer notices on its next idle switch.
	db.Exec(t, `UPDATE relay.sequencer SET holder_pid = pg_backend_pid(),
	            holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())`)
	eventually(t, "a stops leading", func() bool { return !a.leading.Load() })
}

func TestAnnouncementsAreSealedForTheSequencersSession(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key, listener := watchAnnouncements(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := run(t, db.URL, key)
	eventually(t, "a leads", a.leading.Load)
	// The announcement on taking over names the tail the sequencer starts
	// from; an insert before it would be behind that tail.
	if _, err := listener.WaitForNotification(ctx); err != nil {
		t.Fatalf("no announcement on taking over: %v", err)
	}
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('secret plan', '{l}', 'u')`)
	var newest eventlog.ID
	if err := db.Pool.QueryRow(ctx, "SELECT xid, id FROM relay.events").Scan(&newest.Xid, &newest.Seq); err != nil {
		t.Fatal(err)
	}
	// The sequencer announces the event with its row, or, if it took the
	// role just after the insert, by position on taking over.
	for {
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("no announcement of the template: %v", err)
		}
		if n.PID != uint32(holder(t, db)) {
			t.Fatalf("announcement from session %d, want the holder %d", n.PID, holder(t, db))
		}
		plain, err := key.Open(eventlog.AnnounceChannel, n.PID, n.Payload)
		if err != nil {
			t.Fatalf("announcement does not open for its sender: %v (%q)", err, n.Payload)
		}
		ann, err := eventlog.DecodeAnnouncement(plain)
		if err != nil {
			t.Fatal(err)
		}
		if len(ann.Events) > 0 && ann.Events[0].Topic != "templates" {
			t.Fatalf("announced an event of topic %q, want templates", ann.Events[0].Topic)
		}
		if !ann.Upto.Less(newest) {
			return
		}
	}
}

func TestCandidatesNeedTheRelaysRoleToLead(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	roles := pgtest.WithRoles(t, db)
	key := randomKey(t)
	producer := run(t, roles.ProducerURL, key)
	time.Sleep(200 * time.Millisecond)
	if producer.leading.Load() {
		t.Fatal("a producer's session became the sequencer")
	}
	relay := run(t, roles.RelayURL, key)
	eventually(t, "the relay's role leads", relay.leading.Load)
}

func randomKey(t *testing.T) *seal.Key {
	t.Helper()
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	k, err := seal.New(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// announced waits for an announcement carrying an event of topic, and fails
// the test if none comes within d.
func announced(t *testing.T, listener *pgx.Conn, key *seal.Key, topic string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("no announcement of a %s event within %v: %v", topic, d, err)
		}
		plain, err := key.Open(eventlog.AnnounceChannel, n.PID, n.Payload)
		if err != nil {
			continue
		}
		ann, err := eventlog.DecodeAnnouncement(plain)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ann.Events {
			if string(e.Topic) == topic {
				return
			}
		}
	}
}

func TestAnIdleSequencerIsWokenByTheNextInsertAndRewindsItsTicketsWhenItSleepsAgain(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	roles := pgtest.WithRoles(t, db)
	key, listener := watchAnnouncements(t, db)
	// An idle poll of a minute: only a wake-up can announce within seconds.
	sleepy := sequencer.Config{Poll: 2 * time.Millisecond, IdleAfter: 20 * time.Millisecond, IdlePoll: time.Minute, Retry: 20 * time.Millisecond}
	connect := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, roles.RelayURL) }
	s := sequencer.New(connect, key, sleepy, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rewound := func() bool {
		var idle, called bool
		var last int64
		if err := db.Pool.QueryRow(context.Background(),
			"SELECT s.idle, t.last_value, t.is_called FROM relay.sequencer s, relay.wake_tickets t").Scan(&idle, &last, &called); err != nil {
			t.Fatal(err)
		}
		return idle && last == 1 && !called
	}
	// A fresh database starts idle with its tickets rewound: wait for the
	// announcement of taking over, so the first insert comes after the
	// sequencer read the end of the log, then for it to go idle again.
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := listener.WaitForNotification(waitCtx); err != nil {
		t.Fatalf("no announcement of taking over: %v", err)
	}
	waitCancel()
	eventually(t, "the sequencer goes idle", func() bool { return holder(t, db) != 0 && rewound() })
	for round := range 3 {
		db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{l}', 'u')`)
		announced(t, listener, key, "templates", 10*time.Second)
		eventually(t, fmt.Sprintf("the sequencer sleeps again with its tickets rewound (round %d)", round), rewound)
	}
}

func TestABurstStretchesThePollIntervalAndATrickleKeepsItShort(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key := seedUser(t, db)
	// 3,000 events a second to stretch: far above the trickle below, even
	// if a transaction of another test's database holds its events back
	// for a quarter of a second (eventlog.ForeignListAge) and one poll
	// finds five of them at once; far below the burst. Never idle in this
	// test, so every wait is a busy one.
	paced := sequencer.Config{
		Poll: 2 * time.Millisecond, PollMax: 8 * time.Millisecond, StretchRate: 3000,
		IdleAfter: time.Minute, IdlePoll: time.Minute, Retry: 20 * time.Millisecond,
	}
	heard := listenToAnnouncements(t, db.URL, key)
	connect := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db.URL) }
	s := sequencer.New(connect, key, paced, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "the sequencer polls", func() bool { return s.Stats().Polls > 0 })
	if w := s.Stats().Wait; w != paced.Poll {
		t.Fatalf("with nothing to announce the sequencer waits %v between polls, want %v", w, paced.Poll)
	}

	// A trickle: one insert every 50 ms, 20 events a second.
	before := s.Stats()
	for range 20 {
		db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{l}', 'u')`)
		time.Sleep(50 * time.Millisecond) // the trickle's pace, not a synchronisation
	}
	after := s.Stats()
	if after.Polls <= before.Polls+20 {
		t.Fatalf("%d polls during a second of trickle, want more than one per insert", after.Polls-before.Polls)
	}
	if n := after.StretchedPolls - before.StretchedPolls; n != 0 {
		t.Fatalf("%d of %d polls during the trickle were followed by a stretched wait, want none", n, after.Polls-before.Polls)
	}

	// A burst: producers inserting 20 rows at a time as fast as they can.
	// The wait stretches to PollMax.
	burst, stopBurst := context.WithCancel(context.Background())
	producers := make(chan error, 4)
	for range cap(producers) {
		go func() {
			for burst.Err() == nil {
				if _, err := db.Pool.Exec(burst, `INSERT INTO templates (name, share_location_ids, created_by)
				                                  SELECT 'b', '{l}', 'u' FROM generate_series(1, 20)`); err != nil && burst.Err() == nil {
					producers <- err
					return
				}
			}
			producers <- nil
		}()
	}
	stretched := func() bool { return s.Stats().Wait == paced.PollMax }
	deadline := time.Now().Add(10 * time.Second)
	for !stretched() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	reached := stretched()
	stopBurst()
	for range cap(producers) {
		if err := <-producers; err != nil {
			t.Fatalf("burst insert: %v", err)
		}
	}
	if !reached {
		t.Fatalf("the wait never reached %v during the burst (last %v, %d of %d polls stretched)", paced.PollMax,
			s.Stats().Wait, s.Stats().StretchedPolls-after.StretchedPolls, s.Stats().Polls-after.Polls)
	}

	// The first polls after the burst find nothing: the wait is short
	// again, and the burst's last event was announced, not left behind a
	// stretched wait.
	eventually(t, "the wait shrinks back after the burst", func() bool { return s.Stats().Wait == paced.Poll })
	var newest eventlog.ID
	if err := db.Pool.QueryRow(context.Background(), "SELECT xid, id FROM relay.events ORDER BY xid DESC, id DESC LIMIT 1").Scan(&newest.Xid, &newest.Seq); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the burst's last event is announced", func() bool { return !heard.upto().Less(newest) })
}

// announcements follows the sealed announcements on a connection of its
// own until the test ends, remembering the newest position announced.
type announcements struct {
	mu     sync.Mutex
	newest eventlog.ID
}

func listenToAnnouncements(t *testing.T, url string, key *seal.Key) *announcements {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}
	a := &announcements{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			plain, err := key.Open(eventlog.AnnounceChannel, n.PID, n.Payload)
			if err != nil {
				continue
			}
			ann, err := eventlog.DecodeAnnouncement(plain)
			if err != nil {
				continue
			}
			a.mu.Lock()
			if a.newest.Less(ann.Upto) {
				a.newest = ann.Upto
			}
			a.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close(context.Background()) })
	return a
}

func (a *announcements) upto() eventlog.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.newest
}

func TestEventsThatFillSeveralPayloadsAreAnnouncedInOrderEachChainedToTheLast(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key := seedUser(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(ctx, "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}
	a := run(t, db.URL, key)
	eventually(t, "a leads", a.leading.Load)
	first, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("no announcement on taking over: %v", err)
	}
	plain, err := key.Open(eventlog.AnnounceChannel, first.PID, first.Payload)
	if err != nil {
		t.Fatal(err)
	}
	taken, err := eventlog.DecodeAnnouncement(plain)
	if err != nil {
		t.Fatal(err)
	}

	// 40 rows of 400 bytes in one transaction: one poll finds them all
	// (fewer than it announces with their rows), and they fill several
	// payloads.
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by)
	            SELECT repeat('x', 400) || i, '{l}', 'u' FROM generate_series(1, 40) i`)
	var want []eventlog.ID
	rows, err := db.Pool.Query(ctx, "SELECT xid, id FROM relay.events ORDER BY xid, id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id eventlog.ID
		if err := rows.Scan(&id.Xid, &id.Seq); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	var got []eventlog.ID
	payloads, prev := 0, taken.Upto
	for len(got) < len(want) {
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("announced %d of %d events: %v", len(got), len(want), err)
		}
		plain, err := key.Open(eventlog.AnnounceChannel, n.PID, n.Payload)
		if err != nil {
			t.Fatalf("announcement does not open: %v", err)
		}
		ann, err := eventlog.DecodeAnnouncement(plain)
		if err != nil {
			t.Fatal(err)
		}
		if len(ann.Events) == 0 {
			t.Fatalf("announcement %d names only a position (%s): the events fit in notifications", payloads+1, ann.Upto)
		}
		if ann.Prev != prev {
			t.Fatalf("announcement %d follows %s, want the previous one's last event %s", payloads+1, ann.Prev, prev)
		}
		for _, e := range ann.Events {
			got = append(got, e.ID)
		}
		prev = ann.Events[len(ann.Events)-1].ID
		payloads++
	}
	if payloads < 2 {
		t.Fatalf("40 events of 400 bytes in %d payload, want several", payloads)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("announced %v, want the log's %v", got, want)
	}
}

// seedUser gives db a user at a location, so templates can be inserted,
// and returns the announcement key.
func seedUser(t *testing.T, db *pgtest.DB) *seal.Key {
	t.Helper()
	db.Exec(t, `INSERT INTO orgs VALUES ('o', 'O'); INSERT INTO locations VALUES ('l', 'o', 'L');
	            INSERT INTO users (id, name, user_type, org_id) VALUES ('u', 'U', 'ZEWI', 'o')`)
	key, err := seal.Load(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// watchAnnouncements seeds db (seedUser) and returns the announcement key
// and a session listening for announcements.
func watchAnnouncements(t *testing.T, db *pgtest.DB) (*seal.Key, *pgx.Conn) {
	t.Helper()
	key := seedUser(t, db)
	listener, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close(context.Background()) })
	if _, err := listener.Exec(context.Background(), "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}
	return key, listener
}

func TestNewsFromTheCaptureMakesTheSequencerAnnounceAtOnceInsteadOfAfterItsPollInterval(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	key, listener := watchAnnouncements(t, db)
	// A poll interval and idle delay far beyond the test: only news can
	// make this sequencer look at the log again (a busy sequencer is not
	// woken by the producers' triggers).
	news := make(chan struct{}, 1)
	slow := cfg
	slow.Poll, slow.IdleAfter, slow.IdlePoll, slow.News = time.Hour, time.Hour, time.Hour, news
	a := runWith(t, db.URL, key, slow)
	eventually(t, "a leads", a.leading.Load)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := listener.WaitForNotification(ctx); err != nil {
		t.Fatalf("no announcement on taking over: %v", err)
	}
	// Its first poll comes right after the announcement on taking over;
	// from then on it waits out its hour.
	time.Sleep(100 * time.Millisecond)
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('news', '{l}', 'u')`)
	quiet, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	n, err := listener.WaitForNotification(quiet)
	stop()
	if err == nil {
		t.Fatalf("announcement %q before any news: the poll interval was not waited out, so this test shows nothing", n.Payload)
	}
	news <- struct{}{}
	announced(t, listener, key, "templates", 5*time.Second)
}
