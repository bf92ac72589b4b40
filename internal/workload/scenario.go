package workload

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/internal/invariant"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// zeroID is the position before every event: clients start there, so each
// one's first connection replays everything and no event can slip past a
// client that connected late.
const zeroID = "0000000000000000-0000000000000000"

// Scenario is one fault test's traffic: the world, resilient subscribers of
// every kind spread over the relays, concurrent producers, and the checker.
type Scenario struct {
	t         testing.TB
	db        *pgtest.DB
	Checker   *invariant.Checker
	Clients   map[string]*invariant.Client
	Producers *Producers

	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

// Options shape a scenario.
type Options struct {
	// Producers is the number of concurrent producers (default 4).
	Producers int
	// RowPadding bytes are added to every produced row.
	RowPadding int
	// Customize, if set, adjusts each subscriber's client before it starts
	// (e.g. to make one of them slow).
	Customize func(sub string, c *invariant.Client)
}

// Start seeds db, connects every subscriber (client i first to relay i mod
// n, then round-robin on each reconnect), waits until each has a stream,
// and starts the producers.
func Start(t testing.TB, db *pgtest.DB, relays []string, opts Options) *Scenario {
	t.Helper()
	if opts.Producers == 0 {
		opts.Producers = 4
	}
	ctx := context.Background()
	if err := Seed(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	s := &Scenario{t: t, db: db, Checker: invariant.New(), Clients: map[string]*invariant.Client{}, cancel: cancel}
	t.Cleanup(s.stopClients)
	for i, sub := range Subscribers() {
		rotated := append(append([]string(nil), relays[i%len(relays):]...), relays[:i%len(relays)]...)
		c := &invariant.Client{
			Subscriber: sub, Token: relaytest.Token(t, sub), Relays: rotated,
			Checker: s.Checker, StartAfter: zeroID,
		}
		if opts.Customize != nil {
			opts.Customize(sub, c)
		}
		s.Clients[sub] = c
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := c.Run(cctx); err != nil {
				s.mu.Lock()
				s.errs = append(s.errs, err)
				s.mu.Unlock()
			}
		}()
	}
	relaytest.Eventually(t, 30*time.Second, "every subscriber connected", func() bool {
		for _, c := range s.Clients {
			if c.Connects() == 0 {
				return false
			}
		}
		return true
	})
	p, err := StartProducers(ctx, db.URL, opts.Producers, opts.RowPadding)
	if err != nil {
		t.Fatal(err)
	}
	s.Producers = p
	t.Cleanup(func() { p.Stop() })
	return s
}

func (s *Scenario) stopClients() {
	s.cancel()
	s.wg.Wait()
}

// Finish stops the producers, inserts the barrier, waits (up to timeout)
// until every subscriber has everything SQL says it should, stops the
// clients and checks. It logs what was injected and the counts, and fails
// the test unless every guarantee held.
func (s *Scenario) Finish(injected string, timeout time.Duration) invariant.Report {
	t := s.t
	t.Helper()
	ctx := context.Background()
	stats := s.Producers.Stop()
	if err := Barrier(ctx, s.db.Pool, timeout); err != nil {
		t.Fatal(err)
	}
	// What subscribers should receive is read from the log, which in
	// capture mode wal follows the commits by a moment (longer while a new
	// sequencer takes the slot over): wait until it holds every committed
	// template, so nothing is left out of the expectation.
	if err := waitLogged(ctx, s.db.Pool, timeout); err != nil {
		t.Fatal(err)
	}
	waitStart := time.Now()
	complete, err := s.Checker.WaitComplete(ctx, s.db.Pool, Subscribers(), timeout)
	waited := time.Since(waitStart).Round(time.Millisecond)
	if err != nil {
		t.Fatalf("wait for deliveries: %v", err)
	}
	s.stopClients()
	report, err := s.Checker.Check(ctx, s.db.Pool, Subscribers())
	if err != nil {
		t.Fatalf("check deliveries: %v", err)
	}
	var connects, failures int64
	for _, c := range s.Clients {
		connects += c.Connects()
		failures += c.Failures()
	}
	t.Logf("injected: %s", injected)
	t.Logf("producers: %d transactions committed (%d rows), %d rolled back on purpose, %d failed and retried",
		stats.Committed, stats.Rows, stats.RolledBack, stats.Failed)
	t.Logf("clients: %d streams opened, %d failed connection attempts; all deliveries complete %s after the barrier", connects, failures, waited)
	t.Logf("counts: %s", report)
	s.mu.Lock()
	errs := errors.Join(s.errs...)
	s.mu.Unlock()
	if errs != nil {
		t.Errorf("a client was rejected: %v", errs)
	}
	if !complete {
		t.Errorf("not every subscriber received everything within %s", timeout)
	}
	if !report.OK() {
		t.Errorf("delivery guarantees violated: %s", report)
	}
	if report.Expected == 0 || stats.Committed == 0 {
		t.Errorf("nothing was produced: the test proved nothing")
	}
	return report
}

// waitLogged waits until every row of public.templates has its event in
// the log.
func waitLogged(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing int
		err := pool.QueryRow(ctx, `
SELECT count(*) FROM public.templates t
 WHERE NOT EXISTS (SELECT 1 FROM relay.events e WHERE e.topic = 'templates' AND e.payload->>'id' = t.id)`).Scan(&missing)
		if err == nil && missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d committed templates are not in the log after %s (err: %v)", missing, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
