package filter_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

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
