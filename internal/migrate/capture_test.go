package migrate_test

import (
	"context"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

func TestStatusShowsCaptureModeWalAndDownToZeroDropsTheSlotAndThePublication(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	mustRunCLI(t, db, "up")
	ctx := context.Background()
	db.Exec(t, "SELECT relay.set_capture('wal')")
	if out := mustRunCLI(t, db, "status"); !strings.Contains(out, "capture  trigger") || !strings.Contains(out, "(wal requested") {
		t.Fatalf("status before a sequencer completed the switch:\n%s\nwant mode trigger with wal requested", out)
	}
	// The sequencer's half of the switch, done here by hand: the slot
	// (over SQL, at top level), then the switch.
	db.Exec(t, "SELECT pg_create_logical_replication_slot(relay.capture_slot_name(), 'pgoutput')")
	db.Exec(t, "SELECT relay.complete_capture_switch()")
	out := mustRunCLI(t, db, "status")
	if !strings.Contains(out, "capture  wal") || !strings.Contains(out, "replication slot pgrelay_") || !strings.Contains(out, "bytes of WAL retained") {
		t.Fatalf("status in wal mode:\n%s\nwant the mode, the slot and the WAL it retains", out)
	}

	mustRunCLI(t, db, "down", "99")
	var slots, publications int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
	                                        (SELECT count(*) FROM pg_publication)`).Scan(&slots, &publications); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || publications != 0 {
		t.Fatalf("after down to zero: %d replication slots and %d publications left, want none", slots, publications)
	}
}
