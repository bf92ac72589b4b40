package walcapture_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

// The log transaction goes to the server as one pipeline, COMMIT included,
// so the compare-and-set on the captured position has to abort it by
// itself: a capture whose position moved under it (another session
// appended) must leave nothing of its own batch in the log.
func TestALogTransactionWhosePositionMovedUnderItCommitsNoneOfItsEvents(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx := context.Background()
	startCapture(t, db, nil)
	pgtest.WaitCapture(t, db, "wal")
	if err := insertTemplates(ctx, db, "before", 1); err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 30*time.Second)

	// Hold the position's row, so the capture's next log transaction has
	// appended its events and waits on the position when it moves.
	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, "SELECT applied_lsn FROM relay.capture FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	if err := insertTemplates(ctx, db, "fenced", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the capture's log transaction to wait on the captured position", func() bool {
		var waiting bool
		err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND wait_event_type = 'Lock')`, appName).Scan(&waiting)
		return err == nil && waiting
	})
	// Another session "appended" up to now, past the fenced row.
	if _, err := holder.Exec(ctx, "UPDATE relay.capture SET applied_lsn = pg_catalog.pg_current_wal_lsn()"); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The capture starts again from the moved position and goes on with
	// the rows after it.
	if err := insertTemplates(ctx, db, "after", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the row inserted after the fence to reach the log", func() bool {
		var n int
		err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM relay.events e JOIN templates t ON e.payload->>'id' = t.id WHERE t.name = 'after-0'`).Scan(&n)
		return err == nil && n == 1
	})
	var fenced int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM relay.events e JOIN templates t ON e.payload->>'id' = t.id WHERE t.name = 'fenced-0'`).Scan(&fenced); err != nil {
		t.Fatal(err)
	}
	if fenced != 0 {
		t.Fatalf("the row of the fenced log transaction is in the log %d times; want 0 (its transaction must not commit)", fenced)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The stream is read with a read deadline on its connection, not a context:
// the end of Run's context must still end a read that waits for the next
// message at once, not at the next deadline.
func TestRunReturnsAtOnceWhenItsContextEndsWhileTheStreamIsIdle(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	status := &walcapture.Status{}
	done := make(chan error, 1)
	go func() {
		done <- walcapture.New(walcapture.Config{
			Connect:            connectFor(db),
			ConnectReplication: walcapture.ReplicationConnector(db.URL, appName),
			IdleCheck:          time.Minute,
			StatusInterval:     time.Minute,
			Observer:           status,
		}, relaytest.Logger()).Run(ctx)
	}()
	pgtest.WaitCapture(t, db, "wal")
	if err := insertTemplates(ctx, db, "idle", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the row to be appended", func() bool { return status.Events() == 1 })
	time.Sleep(100 * time.Millisecond) // the decoder waits for the next message now

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still reads the stream 10 s after its context ended; its deadlines are a minute away")
	}
}
