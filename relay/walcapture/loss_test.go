package walcapture_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

// gate holds new sessions back while closed.
type gate struct {
	mu     sync.Mutex
	closed bool
	opened chan struct{}
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed, g.opened = true, make(chan struct{})
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.opened)
	}
}

func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	closed, opened := g.closed, g.opened
	g.mu.Unlock()
	if !closed {
		return nil
	}
	select {
	case <-opened:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dropSlotUnderTheCapture terminates the session streaming the database's
// slot and drops the slot, as an operator (or the server, invalidating it)
// would take it away.
func dropSlotUnderTheCapture(t *testing.T, db *pgtest.DB) {
	t.Helper()
	ctx := context.Background()
	relaytest.Eventually(t, 20*time.Second, "the slot is dropped", func() bool {
		_, _ = db.Pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
		                           WHERE slot_name = relay.capture_slot_name() AND active_pid IS NOT NULL`)
		_, err := db.Pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		                              WHERE slot_name = relay.capture_slot_name()`)
		var exists bool
		if err == nil {
			err = db.Pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = relay.capture_slot_name())").Scan(&exists)
		}
		return err == nil && !exists
	})
}

func TestALostSlotLeavesAResetMarkerAtTheGapFallsBackToTriggersAndCapturesFromANewSlot(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx := context.Background()
	var sessions gate
	status := startCapture(t, db, func(cfg *walcapture.Config) {
		connect := cfg.Connect
		cfg.Connect = func(ctx context.Context) (*pgx.Conn, error) {
			if err := sessions.wait(ctx); err != nil {
				return nil, err
			}
			return connect(ctx)
		}
		cfg.StatusInterval = 100 * time.Millisecond
	})
	pgtest.WaitCapture(t, db, "wal")
	if err := insertTemplates(ctx, db, "before", 20); err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 20*time.Second)

	// The slot goes while no capture session can look: the row committed
	// meanwhile, with the triggers off, is in no slot any more.
	sessions.close()
	dropSlotUnderTheCapture(t, db)
	if err := insertTemplates(ctx, db, "gap", 1); err != nil {
		t.Fatal(err)
	}
	sessions.open()

	// The capture falls back to triggers at once and, wal being still
	// asked for, switches again with a new slot.
	relaytest.Eventually(t, 30*time.Second, "the loss is recorded and wal is in force again with a new slot", func() bool {
		var ok bool
		err := db.Pool.QueryRow(ctx, `SELECT c.mode = 'wal' AND c.slot_lost_at IS NOT NULL
		                                 AND EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = c.slot_name AND s.active)
		                                FROM relay.capture c`).Scan(&ok)
		return err == nil && ok
	})
	if !status.Lost() {
		t.Error("the capture does not report the recorded loss (pgrelay_capture_slot_lost, /readyz)")
	}
	if err := insertTemplates(ctx, db, "after", 20); err != nil {
		t.Fatal(err)
	}

	type position struct{ xid, id int64 }
	var marker position
	var markers int
	var reason string
	err := db.Pool.QueryRow(ctx, `SELECT count(*) OVER (), xid, id, payload->>'reason' FROM relay.events WHERE topic = 'pgrelay.reset'`).
		Scan(&markers, &marker.xid, &marker.id, &reason)
	if err != nil {
		t.Fatalf("read the reset marker: %v", err)
	}
	if markers != 1 || reason != "capture slot lost" {
		t.Fatalf("%d reset markers, reason %q; want one, for the lost slot", markers, reason)
	}
	// Every row of the gap is missing; every other row is in the log once,
	// before the marker if it committed before the loss, after it if
	// after the loss.
	relaytest.Eventually(t, 20*time.Second, "every row inserted after the loss is in the log", func() bool {
		var n int
		err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM templates t WHERE t.name LIKE 'after-%'
		                                 AND EXISTS (SELECT 1 FROM relay.events e WHERE e.topic = 'templates' AND e.payload->>'id' = t.id)`).Scan(&n)
		return err == nil && n == 20
	})
	time.Sleep(300 * time.Millisecond) // a late duplicate would show now
	rows, err := db.Pool.Query(ctx, `
SELECT split_part(t.name, '-', 1), count(e.id),
       count(e.id) FILTER (WHERE (e.xid, e.id) < ($1, $2)), count(e.id) FILTER (WHERE (e.xid, e.id) > ($1, $2))
  FROM templates t LEFT JOIN relay.events e ON e.topic = 'templates' AND e.payload->>'id' = t.id
 GROUP BY 1 ORDER BY 1`, marker.xid, marker.id)
	if err != nil {
		t.Fatal(err)
	}
	type tally struct{ events, beforeMarker, afterMarker int }
	got := map[string]tally{}
	for rows.Next() {
		var group string
		var c tally
		if err := rows.Scan(&group, &c.events, &c.beforeMarker, &c.afterMarker); err != nil {
			t.Fatal(err)
		}
		got[group] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]tally{"before": {20, 20, 0}, "gap": {0, 0, 0}, "after": {20, 0, 20}}
	for group, w := range want {
		if got[group] != w {
			t.Errorf("%s rows: %d events in the log, %d before the marker, %d after; want %d, %d, %d",
				group, got[group].events, got[group].beforeMarker, got[group].afterMarker, w.events, w.beforeMarker, w.afterMarker)
		}
	}

	// Any set_capture call acknowledges the loss.
	pgtest.RequestCapture(t, db, "wal")
	relaytest.Eventually(t, 10*time.Second, "the acknowledged loss stops showing", func() bool { return !status.Lost() })
}
