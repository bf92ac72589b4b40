package walcapture_test

// A switch to wal and the decoding of it are done by whichever relay is the
// sequencer at the time, and the sequencer can change hands between any two
// steps. These tests put a second party at the two places where the steps
// meet: the slot's creation, and the switch row the next capture finds
// still undecoded.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

// createSlotAsAnotherRelay creates the database's slot over the replication
// protocol, as a sequencer does, and returns when the server has created it
// (its error, if any, on the channel).
func createSlotAsAnotherRelay(ctx context.Context, db *pgtest.DB) <-chan error {
	done := make(chan error, 1)
	go func() {
		var slot string
		if err := db.Pool.QueryRow(ctx, "SELECT relay.capture_slot_name()").Scan(&slot); err != nil {
			done <- err
			return
		}
		rc, err := walcapture.ReplicationConnector(db.URL, "pgrelay-other-sequencer")(ctx)
		if err != nil {
			done <- err
			return
		}
		defer rc.Close(context.WithoutCancel(ctx))
		_, err = pglogrepl.CreateReplicationSlot(ctx, rc, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT",
		})
		done <- err
	}()
	return done
}

func TestASwitchToWalWaitsForASlotAnotherRelayIsStillCreating(t *testing.T) {
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	ctx := context.Background()
	pgtest.RequestCapture(t, db, "wal")

	// A slot is consistent, and decodes, only from the first moment no
	// transaction that was running when its creation began is still
	// running: while this one stays open, the slot exists but decodes
	// nothing yet.
	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	created := createSlotAsAnotherRelay(ctx, db)
	relaytest.Eventually(t, 10*time.Second, "the slot being created shows in pg_replication_slots", func() bool {
		var exists bool
		err := db.Pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = relay.capture_slot_name())").Scan(&exists)
		return err == nil && exists
	})

	// The sequencer of now finds the slot there and must not switch before
	// it can decode: rows committed meanwhile would be in no slot.
	startCapture(t, db, nil)
	// Ten of the capture's idle checks: a window to switch in, if it would.
	time.Sleep(500 * time.Millisecond)
	var mode string
	if err := db.Pool.QueryRow(ctx, "SELECT mode FROM relay.capture").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "trigger" {
		t.Errorf("capture mode %s in force while the slot is still being created, want trigger until it is", mode)
	}
	if err := insertTemplates(ctx, db, "during-creation", 5); err != nil {
		t.Fatal(err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-created; err != nil {
		t.Fatalf("create the slot: %v", err)
	}
	pgtest.WaitCapture(t, db, "wal")
	if err := insertTemplates(ctx, db, "after", 5); err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 30*time.Second)
}

func TestASwitchToWalAndBackThatNoCaptureDecodedYetIsDecodedBeforeTheSlotIsDropped(t *testing.T) {
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	ctx := context.Background()

	// The sequencer of then creates the slot and switches to wal, and is
	// gone before its capture decoded the switch.
	pgtest.RequestCapture(t, db, "wal")
	if err := <-createSlotAsAnotherRelay(ctx, db); err != nil {
		t.Fatalf("create the slot: %v", err)
	}
	var switched bool
	if err := db.Pool.QueryRow(ctx, "SELECT relay.complete_capture_switch()").Scan(&switched); err != nil || !switched {
		t.Fatalf("complete the switch to wal: %v, %v", switched, err)
	}
	// Only the slot has these: the triggers are off.
	if err := insertTemplates(ctx, db, "wal", 5); err != nil {
		t.Fatal(err)
	}
	// The switch back, completed as a sequencer would (the step waits for
	// older transactions; there are none).
	pgtest.RequestCapture(t, db, "trigger")
	relaytest.Eventually(t, 10*time.Second, "the switch back to trigger is complete", func() bool {
		var done bool
		err := db.Pool.QueryRow(ctx, "SELECT relay.complete_capture_switch()").Scan(&done)
		return err == nil && done
	})
	pgtest.WaitCapture(t, db, "trigger")
	if err := insertTemplates(ctx, db, "trigger", 5); err != nil {
		t.Fatal(err)
	}

	// relay.capture now says trigger, as it did before the switch to wal:
	// the next sequencer must decode up to the switch back before it lets
	// the slot go.
	startCapture(t, db, nil)
	eventuallyLogMatchesTable(t, db, 30*time.Second)
	relaytest.Eventually(t, 20*time.Second, "the drained slot is dropped and forgotten", func() bool {
		var slots int
		var known bool
		err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
		                                     (SELECT slot_name IS NOT NULL FROM relay.capture)`).Scan(&slots, &known)
		return err == nil && slots == 0 && !known
	})
}
