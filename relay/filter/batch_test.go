package filter_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/filter"
)

// countingQuerier counts the filter queries that reach the database.
type countingQuerier struct {
	filter.Querier
	queries atomic.Int64
}

func (c *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.queries.Add(1)
	return c.Querier.Query(ctx, sql, args...)
}

func TestConcurrentOpensShareFilterQueriesAndEachGetsItsOwnFilter(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `
INSERT INTO orgs VALUES ('o', 'O');
INSERT INTO locations VALUES ('l1', 'o', 'L1'), ('l2', 'o', 'L2');
INSERT INTO users (id, name, user_type, org_id, location_id)
SELECT 'u' || i, 'U', 'ZOLO', 'o', CASE WHEN i % 2 = 0 THEN 'l2' ELSE 'l1' END
  FROM generate_series(1, 200) AS i;`)
	q := &countingQuerier{Querier: db.Pool}
	var gen atomic.Uint64
	b := filter.NewBatcher(q, func() uint64 { return gen.Add(1) }, 50)

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := "u" + itoa(i)
			f, g, err := b.Load(context.Background(), sub)
			if err != nil {
				errs <- err
				return
			}
			want := "location:l1"
			if i%2 == 0 {
				want = "location:l2"
			}
			if !f.Exists || len(f.Keys["templates"]) != 1 || f.Keys["templates"][0] != want || g == 0 {
				t.Errorf("%s: got %+v at generation %d, want exists with [%s]", sub, f, g, want)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, _, err := b.Load(context.Background(), "nobody")
		if err != nil {
			errs <- err
		} else if f.Exists {
			t.Errorf("unknown subscriber loaded as existing")
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := q.queries.Load(); got >= n/2 {
		t.Fatalf("%d concurrent loads took %d queries; want them batched (at most %d per query)", n+1, got, 50)
	}
	t.Logf("%d concurrent loads took %d queries", n+1, q.queries.Load())
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestIdsPostgreSQLCannotStoreLoadAsNobodyWithoutFailingTheOthers(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `
INSERT INTO orgs VALUES ('o', 'O');
INSERT INTO locations VALUES ('l1', 'o', 'L1');
INSERT INTO users (id, name, user_type, org_id, location_id) VALUES ('u1', 'U', 'ZOLO', 'o', 'l1'), ('u2', 'U', 'ZOLO', 'o', 'l1');`)
	got, err := filter.Load(context.Background(), db.Pool, []string{"u1", "u1\x00", "\xff\xfe", "u2"})
	if err != nil {
		t.Fatalf("one unstorable id failed the whole load: %v", err)
	}
	for id, want := range map[string]bool{"u1": true, "u2": true, "u1\x00": false, "\xff\xfe": false} {
		if f, ok := got[id]; !ok || f.Exists != want {
			t.Errorf("%q: got %+v (present %v), want Exists %v", id, f, ok, want)
		}
	}
}

// poisonQuerier rejects, as the server rejects data it cannot take, every
// filter query that includes the subscriber "poison"; every query waits for
// gate, and entered counts those that reached it.
type poisonQuerier struct {
	filter.Querier
	entered atomic.Int64
	gate    chan struct{}
}

func (p *poisonQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	p.entered.Add(1)
	<-p.gate
	if ids, ok := args[0].([]string); ok && slices.Contains(ids, "poison") {
		return nil, &pgconn.PgError{Code: "22021", Message: "invalid byte sequence for encoding \"UTF8\""}
	}
	return p.Querier.Query(ctx, sql, args...)
}

func TestASubscriberTheServerRejectsFailsOnlyItsOwnLoadNotItsBatch(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `
INSERT INTO orgs VALUES ('o', 'O');
INSERT INTO locations VALUES ('l1', 'o', 'L1');
INSERT INTO users (id, name, user_type, org_id, location_id)
SELECT 'u' || i, 'U', 'ZOLO', 'o', 'l1' FROM generate_series(0, 30) AS i;`)
	q := &poisonQuerier{Querier: db.Pool, gate: make(chan struct{})}
	var gen atomic.Uint64
	b := filter.NewBatcher(q, func() uint64 { return gen.Add(1) }, 50)

	// The first loads hold every query the Batcher runs at once; everyone
	// else, poison included, queues behind them and goes into the next
	// query together.
	var wg sync.WaitGroup
	results := make(map[string]error)
	var mu sync.Mutex
	load := func(sub string) {
		defer wg.Done()
		f, _, err := b.Load(context.Background(), sub)
		if err == nil && !f.Exists {
			err = errors.New("loaded as not existing")
		}
		mu.Lock()
		results[sub] = err
		mu.Unlock()
	}
	holders := []string{}
	for i := range filter.LoadsAtOnce {
		holders = append(holders, "u"+itoa(21+i))
		wg.Add(1)
		go load(holders[i])
		// One at a time, so that each is a query of its own.
		for deadline := time.Now().Add(10 * time.Second); q.entered.Load() < int64(i+1); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("load %d of %d did not reach the database", i+1, filter.LoadsAtOnce)
			}
		}
	}
	subs := []string{"poison"}
	for i := 0; i <= 20; i++ {
		subs = append(subs, "u"+itoa(i))
	}
	for _, s := range subs {
		wg.Add(1)
		go load(s)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Queued() < len(subs) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d loads queued", b.Queued(), len(subs))
		}
		time.Sleep(time.Millisecond)
	}
	close(q.gate)
	wg.Wait()
	if results["poison"] == nil {
		t.Error("the rejected subscriber's load succeeded")
	}
	for _, s := range append(subs[1:], holders...) {
		if err := results[s]; err != nil {
			t.Errorf("%s, batched with the rejected subscriber: %v", s, err)
		}
	}
}

// slowQuerier holds every filter query until release is closed, counting
// how many wait at once.
type slowQuerier struct {
	filter.Querier
	release  chan struct{}
	inFlight atomic.Int64
	most     atomic.Int64
}

func (s *slowQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-s.release
	return s.Querier.Query(ctx, sql, args...)
}

// A slow filter query must not hold every opening stream in line behind
// it, and a burst must not turn into a query per stream either.
func TestASlowFilterQueryDoesNotHoldEveryOtherOpenBehindItButLoadsStayBounded(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `
INSERT INTO orgs VALUES ('o', 'O');
INSERT INTO locations VALUES ('l1', 'o', 'L1');
INSERT INTO users (id, name, user_type, org_id, location_id)
SELECT 'u' || i, 'U', 'ZOLO', 'o', 'l1' FROM generate_series(1, 100) AS i;`)
	q := &slowQuerier{Querier: db.Pool, release: make(chan struct{})}
	var gen atomic.Uint64
	b := filter.NewBatcher(q, func() uint64 { return gen.Add(1) }, 50)
	var wg sync.WaitGroup
	for i := 1; i <= 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f, _, err := b.Load(context.Background(), "u"+itoa(i)); err != nil || !f.Exists {
				t.Errorf("u%d: %+v, %v", i, f, err)
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.inFlight.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for more than the bound to start, were there no bound
	if got := q.inFlight.Load(); got < 2 || got > 3 {
		t.Errorf("%d filter queries in flight behind a slow one, want 2 or 3", got)
	}
	close(q.release)
	wg.Wait()
	if got := q.most.Load(); got > 3 {
		t.Errorf("at most %d queries ran at once, want at most 3", got)
	}
}
