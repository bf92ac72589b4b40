package retention_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/retention"
)

// settle bounds waits on the log: pruning, like reading, stops below the
// horizon, and a loaded machine running the whole suite slows everything.
const settle = 30 * time.Second

func positions(t *testing.T, db *pgtest.DB, where string) []eventlog.ID {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), "SELECT xid, id FROM relay.events WHERE "+where+" ORDER BY xid, id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []eventlog.ID
	for rows.Next() {
		var id eventlog.ID
		if err := rows.Scan(&id.Xid, &id.Seq); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t *testing.T, db *pgtest.DB, sql string) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func horizon(t *testing.T, db *pgtest.DB) eventlog.ID {
	t.Helper()
	h, err := eventlog.Horizon(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// age makes every event visible now look two hours old.
func age(t *testing.T, db *pgtest.DB) {
	t.Helper()
	db.Exec(t, `UPDATE relay.events SET created_at = now() - interval '2 hours'`)
}

// pruneUntil prunes until cond holds.
func pruneUntil(t *testing.T, db *pgtest.DB, olderThan time.Duration, maxEvents int64, batch int, what string, cond func() bool) retention.Result {
	t.Helper()
	var total retention.Result
	relaytest.Eventually(t, settle, what, func() bool {
		res, err := retention.Prune(context.Background(), db.Pool, olderThan, maxEvents, batch)
		if err != nil {
			t.Fatalf("Prune: %v", err)
		}
		total.Deleted += res.Deleted
		total.Horizon = res.Horizon
		return cond()
	})
	return total
}

func TestPruneRemovesOldEventsInBatchesWhileProducersKeepInserting(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	for i := range 20 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("old-%d", i), "zowi-1", "loc-1")
	}
	age(t, db)
	old := positions(t, db, "true")
	if len(old) != 20 {
		t.Fatalf("%d old events, want 20", len(old))
	}

	var (
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		mu       sync.Mutex
		produced int
		prodErr  error
	)
	for p := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := db.Pool.Exec(context.Background(),
					`INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1}', 'zowi-2')`,
					fmt.Sprintf("new-%d-%d", p, i))
				mu.Lock()
				if err != nil && prodErr == nil {
					prodErr = err
				}
				produced++
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	res := pruneUntil(t, db, time.Hour, 0, 3, "old events pruned", func() bool {
		return count(t, db, `SELECT count(*) FROM relay.events WHERE payload->>'name' LIKE 'old-%'`) == 0
	})
	// Keep producing a little after the prune finished.
	mu.Lock()
	after := produced
	mu.Unlock()
	relaytest.Eventually(t, settle, "more inserts", func() bool { mu.Lock(); defer mu.Unlock(); return produced > after+20 })
	close(stop)
	wg.Wait()

	if prodErr != nil {
		t.Fatalf("a producer failed while pruning ran: %v", prodErr)
	}
	if res.Deleted != 20 {
		t.Errorf("deleted %d events, want the 20 old ones", res.Deleted)
	}
	if want := old[len(old)-1]; res.Horizon != want || horizon(t, db) != want {
		t.Errorf("horizon %s (stored %s), want the newest pruned position %s", res.Horizon, horizon(t, db), want)
	}
	if n := count(t, db, `SELECT count(*) FROM templates t WHERE t.name LIKE 'new-%'
	   AND NOT EXISTS (SELECT 1 FROM relay.events e WHERE e.payload->>'id' = t.id)`); n != 0 {
		t.Errorf("%d events newer than the cutoff were pruned", n)
	}
	if n := count(t, db, `SELECT count(*) FROM templates WHERE name LIKE 'new-%'`); n < 20 {
		t.Errorf("only %d inserts while pruning ran", n)
	}
}

func TestPruneNeverPassesAnOpenTransaction(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	ctx := context.Background()
	relaytest.InsertTemplate(t, db, "a", "zowi-1", "loc-1")
	open, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := open.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('late', '{loc-1}', 'zowi-2')`); err != nil {
		t.Fatal(err)
	}
	relaytest.InsertTemplate(t, db, "b", "zowi-1", "loc-1")
	age(t, db) // a and b: old; late is not visible yet
	a := positions(t, db, `payload->>'name' = 'a'`)[0]

	pruneUntil(t, db, time.Hour, 0, 100, "a pruned", func() bool {
		return count(t, db, `SELECT count(*) FROM relay.events WHERE payload->>'name' = 'a'`) == 0
	})
	for range 5 {
		if _, err := retention.Prune(ctx, db.Pool, time.Hour, 0, 100); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM relay.events WHERE payload->>'name' = 'b'`); n != 1 {
		t.Fatal("b was pruned although an open transaction could still commit an event before it")
	}
	if h := horizon(t, db); h != a {
		t.Errorf("horizon %s, want a's position %s", h, a)
	}
	if err := open.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	late := positions(t, db, `payload->>'name' = 'late'`)[0]
	if !a.Less(late) {
		t.Errorf("the late commit landed at %s, at or behind the horizon %s", late, a)
	}
	age(t, db)
	pruneUntil(t, db, time.Hour, 0, 100, "everything pruned", func() bool {
		return count(t, db, `SELECT count(*) FROM relay.events`) == 0
	})
	if b := horizon(t, db); !late.Less(b) && b != late {
		t.Errorf("horizon %s after pruning everything, want at least %s", b, late)
	}
}

func TestPruneCapsTheLogLength(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	for i := range 10 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("t%d", i), "zowi-1", "loc-1")
	}
	all := positions(t, db, "true")
	pruneUntil(t, db, 24*time.Hour, 4, 3, "log capped", func() bool {
		return count(t, db, `SELECT count(*) FROM relay.events`) == 4
	})
	kept := positions(t, db, "true")
	for i, id := range kept {
		if id != all[6+i] {
			t.Fatalf("kept %v, want the newest four %v", kept, all[6:])
		}
	}
	if h := horizon(t, db); h != all[5] {
		t.Errorf("horizon %s, want the newest pruned %s", h, all[5])
	}
	// At the cap already: nothing more goes.
	res, err := retention.Prune(context.Background(), db.Pool, 24*time.Hour, 4, 3)
	if err != nil || res.Deleted != 0 {
		t.Errorf("second prune at the cap deleted %d (err %v), want 0", res.Deleted, err)
	}
}
