package invariant_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/pgrelay/pgrelay/internal/invariant"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/workload"
)

// TestTheCheckerCountsEveryKindOfViolation feeds the checker deliveries
// that break each guarantee once, so a fault test's "all zero" means
// something.
func TestTheCheckerCountsEveryKindOfViolation(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if err := workload.Seed(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	mk := func(name, creator string, share ...string) invariant.Delivery {
		t.Helper()
		if share == nil {
			share = []string{}
		}
		var id string
		if err := db.Pool.QueryRow(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, $2, $3) RETURNING id`,
			name, share, creator).Scan(&id); err != nil {
			t.Fatal(err)
		}
		var d invariant.Delivery
		if err := db.Pool.QueryRow(ctx, `
SELECT lpad(to_hex(xid), 16, '0') || '-' || lpad(to_hex(id), 16, '0'), payload::text
  FROM relay.events WHERE payload->>'id' = $1`, id).Scan(&d.ID, &d.Data); err != nil {
			t.Fatal(err)
		}
		d.Topic = "templates"
		return d
	}
	t1 := mk("t1", "zolo-a1", "a1") // zowi-a, zowi-a2, zewi-a
	t2 := mk("t2", "zolo-b1", "b1") // org-b only
	t3 := mk("t3", "zelo-a2", "a1") // zowi-a, zowi-a2, zewi-a, zolo-a1

	c := invariant.New()
	// zewi-a: t1 twice (duplicated), t2 (misdelivered, cross-tenant), no t3 (lost).
	c.Record("zewi-a", t1)
	c.Record("zewi-a", t1)
	c.Record("zewi-a", t2)
	// zowi-a: t3 then t1 (out of order).
	c.Record("zowi-a", t3)
	c.Record("zowi-a", t1)
	// zolo-a1: its own t1 (misdelivered), t3 with another row (corrupted).
	c.Record("zolo-a1", t1)
	c.Record("zolo-a1", invariant.Delivery{ID: t3.ID, Topic: "templates", Data: `{"name":"forged"}`})
	// zowi-a2: everything, right; data with other spacing still matches.
	c.Record("zowi-a2", t1)
	c.Record("zowi-a2", invariant.Delivery{ID: t3.ID, Topic: t3.Topic, Data: " " + t3.Data + " "})
	c.RecordReset("zowi-a2")

	subs := []string{"zewi-a", "zowi-a", "zolo-a1", "zowi-a2"}
	if ok, err := c.Complete(ctx, db.Pool, subs); err != nil || ok {
		t.Errorf("Complete = %v, %v; want false: zewi-a never got t3", ok, err)
	}
	r, err := c.Check(ctx, db.Pool, subs)
	if err != nil {
		t.Fatal(err)
	}
	want := invariant.Report{
		Subscribers: 4, Produced: 3, Expected: 7, Delivered: 9,
		Lost: 1, Duplicated: 1, Misdelivered: 2, OutOfOrder: 1, Corrupted: 1, CrossTenant: 1, Resets: 1,
	}
	got := r
	got.Problems = nil
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("report:\n got %s\nwant %s", r, want)
	}
	if r.OK() {
		t.Errorf("a report with violations is OK")
	}
}
