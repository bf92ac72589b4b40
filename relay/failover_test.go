package relay_test

// Failover and reconnect-storm tests sized for CI: a few relays as
// processes on one database, templates inserted at a steady pace, one relay
// stopped (SIGKILL, or SIGTERM for a clean shutdown), and the invariant
// checker comparing every subscriber's deliveries with what SQL says it
// should receive: every event exactly once, in order.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/internal/invariant"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/workload"
)

// failoverWait bounds every wait of these tests.
const failoverWait = 60 * time.Second

// zeroEventID is the position before every event: a client that starts
// there replays everything, so none can miss an event by connecting late.
const zeroEventID = "0000000000000000-0000000000000000"

// pacedInserts are what the paced producer writes in turn, in workload's
// world: creators of both orgs and every kind, audiences from none to all
// of an org's locations.
var pacedInserts = []struct {
	creator string
	share   []string
}{
	{"zowi-a", []string{"a1"}},
	{"zolo-a1", []string{"a1", "a2"}},
	{"zewi-a", []string{}},
	{"zowi-b", []string{"b1", "b2"}},
	{"zelo-a2", []string{"a2", "a3"}},
	{"zolo-b1", []string{"b1"}},
	{"zelo-b2", []string{"b2"}},
}

// pacedProducer inserts one template per tick, as a steady application
// would, retrying through faults on the next tick.
type pacedProducer struct {
	pool      *pgxpool.Pool
	cancel    context.CancelFunc
	done      chan struct{}
	committed atomic.Int64
	failed    atomic.Int64
}

// producePaced starts inserting perSecond templates a second into db, on
// sessions the relays' faults spare (application_name pgrelay-producer).
func producePaced(t *testing.T, db *pgtest.DB, perSecond int) *pacedProducer {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgrelay-producer"
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &pacedProducer{pool: pool, cancel: cancel, done: make(chan struct{})}
	go p.run(ctx, time.Second/time.Duration(perSecond))
	t.Cleanup(p.stop)
	return p
}

func (p *pacedProducer) run(ctx context.Context, every time.Duration) {
	defer close(p.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		in := pacedInserts[i%len(pacedInserts)]
		_, err := p.pool.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, $2, $3)`,
			"paced-"+strconv.Itoa(i), in.share, in.creator)
		if err != nil {
			p.failed.Add(1)
			continue
		}
		p.committed.Add(1)
	}
}

// waitCommitted waits until n more inserts than now have committed: proof
// that traffic flowed across whatever happened meanwhile.
func (p *pacedProducer) waitCommitted(t *testing.T, n int64) {
	t.Helper()
	target := p.committed.Load() + n
	relaytest.Eventually(t, failoverWait, fmt.Sprintf("%d more inserts committed", n), func() bool { return p.committed.Load() >= target })
}

// stop stops inserting and waits for the producer.
func (p *pacedProducer) stop() {
	p.cancel()
	<-p.done
	p.pool.Close()
}

// subscribers are resilient clients (invariant.Client) that each record into
// a checker of their own, so that several may subscribe as one user.
type subscribers struct {
	clients  []*invariant.Client
	checkers []*invariant.Checker
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	errs     []error
}

// subscribe starts n clients, the i-th as the i-th user of workload's world
// (round-robin) on relays(i), and waits until each has a stream.
func subscribe(t *testing.T, n int, relays func(i int) []string) *subscribers {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscribers{cancel: cancel}
	t.Cleanup(s.stop)
	users := workload.Subscribers()
	for i := range n {
		user := users[i%len(users)]
		checker := invariant.New()
		c := &invariant.Client{Subscriber: user, Token: relaytest.Token(t, user), Relays: relays(i), Checker: checker, StartAfter: zeroEventID}
		s.clients, s.checkers = append(s.clients, c), append(s.checkers, checker)
		s.wg.Go(func() {
			if err := c.Run(ctx); err != nil {
				s.mu.Lock()
				s.errs = append(s.errs, err)
				s.mu.Unlock()
			}
		})
	}
	relaytest.Eventually(t, failoverWait, fmt.Sprintf("%d subscribers connected", n), func() bool {
		for _, c := range s.clients {
			if c.Connects() == 0 {
				return false
			}
		}
		return true
	})
	return s
}

func (s *subscribers) stop() {
	s.cancel()
	s.wg.Wait()
}

// finish inserts workload's barrier (a template for every subscriber, after
// everything else), waits until every client has all SQL says it should,
// stops them and checks each: every event exactly once, in order, nothing
// else. It returns the connection attempts that failed (refused, or to a
// relay that was gone).
func (s *subscribers) finish(t *testing.T, db *pgtest.DB) (failures int64) {
	t.Helper()
	ctx := context.Background()
	if err := workload.Barrier(ctx, db.Pool, failoverWait); err != nil {
		t.Fatal(err)
	}
	// Expectations are read from the log, which in capture mode wal follows
	// the commits by a moment (longer while a new sequencer takes the slot
	// over): wait until it holds every template.
	relaytest.Eventually(t, failoverWait, "every committed template in the log", func() bool {
		var missing int
		err := db.Pool.QueryRow(ctx, `
SELECT count(*) FROM public.templates t
 WHERE NOT EXISTS (SELECT 1 FROM relay.events e WHERE e.topic = 'templates' AND e.payload->>'id' = t.id)`).Scan(&missing)
		return err == nil && missing == 0
	})
	deadline := time.Now().Add(failoverWait)
	for i, c := range s.clients {
		complete, err := s.checkers[i].WaitComplete(ctx, db.Pool, []string{c.Subscriber}, time.Until(deadline))
		if err != nil || !complete {
			t.Fatalf("client %d (%s) did not receive everything within %s (last id %s, last error %q): %v",
				i, c.Subscriber, failoverWait, c.LastID(), c.LastError(), err)
		}
	}
	s.stop()
	var total invariant.Report
	for i, c := range s.clients {
		r, err := s.checkers[i].Check(ctx, db.Pool, []string{c.Subscriber})
		if err != nil {
			t.Fatalf("check client %d: %v", i, err)
		}
		if !r.OK() {
			t.Errorf("client %d (%s): delivery guarantees violated: %s", i, c.Subscriber, r)
		}
		total.Produced = r.Produced
		total.Expected += r.Expected
		total.Delivered += r.Delivered
		failures += c.Failures()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.errs {
		t.Errorf("a client was rejected: %v", err)
	}
	if total.Expected == 0 {
		t.Errorf("no subscriber expected anything: the test proved nothing")
	}
	t.Logf("%d clients: %d events in the log, %d deliveries expected, %d made; %d failed connection attempts",
		len(s.clients), total.Produced, total.Expected, total.Delivered, failures)
	return failures
}

// startProcesses runs n relays as processes on db, each with env.
func startProcesses(t *testing.T, bin string, db *pgtest.DB, n int, env ...string) []*relaytest.Process {
	t.Helper()
	procs := make([]*relaytest.Process, n)
	for i := range procs {
		procs[i] = relaytest.StartProcess(t, bin, db.URL, env...)
	}
	return procs
}

// theSequencer waits until exactly one of procs is the sequencer and
// returns its index.
func theSequencer(t *testing.T, procs []*relaytest.Process) int {
	t.Helper()
	found := -1
	relaytest.Eventually(t, failoverWait, "exactly one sequencer", func() bool {
		found = -1
		for i, p := range procs {
			if isSequencer(t, p.URL) {
				if found >= 0 {
					return false
				}
				found = i
			}
		}
		return found >= 0
	})
	return found
}

func TestWhenTheSequencersRelayStopsAnotherTakesOverAndSurvivingSubscribersMissNothing(t *testing.T) {
	t.Parallel()
	bin := relaytest.BuildRelay(t)
	stops := []struct {
		name string
		stop func(p *relaytest.Process, t testing.TB)
	}{
		{"SIGKILL", (*relaytest.Process).Kill},
		{"clean shutdown", (*relaytest.Process).Shutdown},
	}
	for _, s := range stops {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			// In capture mode wal the sequencer also reads the replication
			// slot: its successor must take the slot over.
			pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
				sequencerFailover(t, bin, mode, s.stop)
			})
		})
	}
}

// sequencerFailover runs three relays in capture mode, subscribers on the
// two that are not the sequencer, inserts at 50 a second, and stops the
// sequencer's relay with stop while they flow.
func sequencerFailover(t *testing.T, bin, mode string, stop func(p *relaytest.Process, t testing.TB)) {
	db := pgtest.NewInMode(t, mode)
	if err := workload.Seed(context.Background(), db.Pool); err != nil {
		t.Fatal(err)
	}
	procs := startProcesses(t, bin, db, 3)
	pgtest.WaitCapture(t, db, mode)
	seq := theSequencer(t, procs)
	var survivors []*relaytest.Process
	for i, p := range procs {
		if i != seq {
			survivors = append(survivors, p)
		}
	}
	subs := subscribe(t, len(workload.Subscribers()), func(i int) []string { return []string{survivors[i%2].URL} })
	producer := producePaced(t, db, 50)
	producer.waitCommitted(t, 25)

	start := time.Now()
	stop(procs[seq], t)
	relaytest.Eventually(t, failoverWait, "a surviving relay to become the sequencer", func() bool {
		return isSequencer(t, survivors[0].URL) || isSequencer(t, survivors[1].URL)
	})
	t.Logf("the sequencer stopped: another relay took the role over within %s", time.Since(start).Round(time.Millisecond))
	producer.waitCommitted(t, 50)
	producer.stop()
	subs.finish(t, db)
	for i, c := range subs.clients {
		if n := c.Connects(); n != 1 {
			t.Errorf("client %d (%s) opened %d streams: the sequencer's departure must not disturb other relays' streams", i, c.Subscriber, n)
		}
	}
}

func TestAKilledRelaysStreamsStormTheOthersWithLastEventIDAndMissNothing(t *testing.T) {
	t.Parallel()
	bin := relaytest.BuildRelay(t)
	db := pgtest.New(t)
	if err := workload.Seed(context.Background(), db.Pool); err != nil {
		t.Fatal(err)
	}
	// The victim admits its streams however many open at once; the others
	// have a tight bound on opening streams, so that the storm is partly
	// refused and comes back: refused clients must lose nothing either.
	victim := relaytest.StartProcess(t, bin, db.URL, "RELAY_MAX_OPENING=0", "RELAY_OPEN_WAIT=1m")
	others := startProcesses(t, bin, db, 2, "RELAY_MAX_OPENING=8", "RELAY_OPEN_CONCURRENCY=2")
	const streams = 200
	subs := subscribe(t, streams, func(i int) []string {
		return []string{victim.URL, others[i%2].URL, others[1-i%2].URL}
	})
	// Every stream is on the victim (its first relay, which refused
	// none): they all reconnect elsewhere.
	for i, c := range subs.clients {
		if c.Failures() != 0 {
			t.Fatalf("client %d failed to connect to the victim first (%s)", i, c.LastError())
		}
	}
	producer := producePaced(t, db, 50)
	producer.waitCommitted(t, 25)

	start := time.Now()
	victim.Kill(t)
	relaytest.Eventually(t, failoverWait, "every stream of the killed relay reopened on another", func() bool {
		for _, c := range subs.clients {
			if c.Connects() < 2 {
				return false
			}
		}
		return true
	})
	t.Logf("SIGKILL of %s with %d streams: all reopened on the other two within %s", victim, streams, time.Since(start).Round(time.Millisecond))
	producer.waitCommitted(t, 25)
	producer.stop()
	failures := subs.finish(t, db)
	t.Logf("%d connection attempts failed (refused as busy, or to the killed relay) and were retried", failures)
}
