package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
)

const insertTemplate = `INSERT INTO templates (id, name, share_location_ids, created_by) VALUES ($1, 'x', '{loc-1}', 'zolo')`

func TestAReaderIsHeldBackByAnEarlierOpenTransaction(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := context.Background()

	// A takes its xid first, B second; B commits while A is still open.
	txA, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txA.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := txA.Exec(ctx, insertTemplate, "A"); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, insertTemplate, "B")

	// With sequence ids alone a reader could now return B and move past A's
	// position. Here A's xid holds the snapshot xmin below B's, so nothing
	// is readable: however long we look, B stays hidden while A is open.
	for range 20 {
		events, err := eventlog.ReadAfter(ctx, db.Pool, eventlog.ID{}, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) != 0 {
			t.Fatalf("while A is open, ReadAfter returned %d event(s), first template %q; want none", len(events), templateID(t, events[0]))
		}
	}
	tail, err := eventlog.Tail(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if !tail.IsZero() {
		t.Errorf("while A is open, Tail = %s, want the zero ID", tail)
	}

	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	events := readUntil(t, db.Pool, eventlog.ID{}, 2)
	got := []string{templateID(t, events[0]), templateID(t, events[1])}
	if got[0] != "A" || got[1] != "B" {
		t.Errorf("after A commits, events = %v, want [A B] (xid order, not commit order)", got)
	}
	if !events[0].ID.Less(events[1].ID) {
		t.Errorf("A's id %s is not before B's id %s", events[0].ID, events[1].ID)
	}
}

// writerResult is what one writer committed and rolled back.
type writerResult struct {
	committed, rolledBack []string
	// commits pairs each committed transaction's xid with the order in which
	// commits returned, to show that commit order differed from xid order.
	commits []commitRecord
}

type commitRecord struct {
	xid   int64
	order int64
}

func TestAPollingReaderSeesEveryCommittedRowOnceInIncreasingOrder(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const writers, txPerWriter = 8, 200
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = writers
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	var commitOrder atomic.Int64
	results := make([]writerResult, writers)
	writersDone := make(chan struct{})
	var g errgroup.Group
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for i := range txPerWriter {
				if err := writeOne(ctx, pool, rng, fmt.Sprintf("w%d-t%d", w, i), &results[w], &commitOrder); err != nil {
					return err
				}
			}
			return nil
		})
	}
	go func() { wg.Wait(); close(writersDone) }()

	seen := map[string]int{}
	var order []eventlog.ID
	var last eventlog.ID
	read := func() (int, error) {
		events, err := eventlog.ReadAfter(ctx, db.Pool, last, 500)
		for _, e := range events {
			order = append(order, e.ID)
			seen[templateID(t, e)]++
			last = e.ID
		}
		return len(events), err
	}
	// Read concurrently with the writers, as the relay does.
	for running := true; running; {
		select {
		case <-writersDone:
			running = false
		default:
		}
		n, err := read()
		if err != nil {
			t.Fatalf("read while writing: %v", err)
		}
		if n == 0 {
			time.Sleep(time.Millisecond) // poll interval, like the relay's
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}

	var committed, rolledBack []string
	var commits []commitRecord
	for _, r := range results {
		committed = append(committed, r.committed...)
		rolledBack = append(rolledBack, r.rolledBack...)
		commits = append(commits, r.commits...)
	}
	// Drain: every writer is done, so the rest becomes readable as soon as
	// unrelated transactions in the cluster end.
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < len(committed) && time.Now().Before(deadline) {
		n, err := read()
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
		if n == 0 {
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}

	for _, id := range committed {
		if seen[id] != 1 {
			t.Errorf("committed row %s was read %d times, want exactly once", id, seen[id])
		}
	}
	for _, id := range rolledBack {
		if seen[id] != 0 {
			t.Errorf("rolled-back row %s was read %d times, want never", id, seen[id])
		}
	}
	if len(seen) != len(committed) {
		t.Errorf("read %d distinct rows, want the %d committed", len(seen), len(committed))
	}
	for i := 1; i < len(order); i++ {
		if !order[i-1].Less(order[i]) {
			t.Fatalf("event %d id %s is not after event %d id %s", i, order[i], i-1, order[i-1])
		}
	}
	if len(rolledBack) == 0 {
		t.Error("no transaction was rolled back: the test did not exercise rollbacks")
	}
	if inv := inversions(commits); inv == 0 {
		t.Error("every transaction committed in xid order: the test did not exercise late commits")
	} else {
		t.Logf("%d committed rows, %d rolled back, %d transactions committed after a later-started one", len(committed), len(rolledBack), inv)
	}
}

// writeOne runs one transaction of 1–5 rows with short pauses between them,
// so transactions overlap and commit out of xid order; one in eight is
// rolled back on purpose.
func writeOne(ctx context.Context, pool *pgxpool.Pool, rng *rand.Rand, name string, res *writerResult, commitOrder *atomic.Int64) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var xid int64
	if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		return err
	}
	rows := 1 + rng.IntN(5)
	var ids []string
	for r := range rows {
		id := fmt.Sprintf("%s-r%d", name, r)
		if _, err := tx.Exec(ctx, insertTemplate, id); err != nil {
			return fmt.Errorf("insert %s: %w", id, err)
		}
		ids = append(ids, id)
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Microsecond)
	}
	if rng.IntN(8) == 0 {
		res.rolledBack = append(res.rolledBack, ids...)
		return tx.Rollback(ctx)
	}
	if err := tx.Commit(ctx); err != nil {
		if errors.Is(err, pgx.ErrTxCommitRollback) {
			return fmt.Errorf("commit of %s was rolled back", name)
		}
		return err
	}
	res.committed = append(res.committed, ids...)
	res.commits = append(res.commits, commitRecord{xid: xid, order: commitOrder.Add(1)})
	return nil
}

// inversions counts commits that returned before a commit of a transaction
// with a smaller xid: the late commits a sequence-ordered reader would miss.
func inversions(commits []commitRecord) int {
	sort.Slice(commits, func(i, j int) bool { return commits[i].xid < commits[j].xid })
	n := 0
	maxOrder := int64(0)
	for _, c := range commits {
		if c.order < maxOrder {
			n++
		}
		maxOrder = max(maxOrder, c.order)
	}
	return n
}

func TestATransactionInAnotherDatabaseDoesNotHoldTheReaderBack(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	other := pgtest.Empty(t)
	ctx := context.Background()

	// A write transaction stays open in another database of the same
	// server, with an xid older than the event below.
	tx, err := other.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // ends the open transaction
	if _, err := tx.Exec(ctx, "CREATE TABLE held_open (x int)"); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, insertTemplate, "after-the-other-database")

	events, err := eventlog.ReadAfter(ctx, db.Pool, eventlog.ID{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 {
		t.Fatalf("with a transaction open in another database, ReadAfter returned %d events, want 1", len(events))
	}
}
