package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

func TestInWalModeARelayWithTheDocumentedRolesCapturesProducersRowsAndNoOtherLoginReadsTheSlotOrSwitchesTheMode(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	ctx := context.Background()
	// What docs/roles.sql asks a superuser to run for wal mode.
	if _, err := db.Pool.Exec(ctx, fmt.Sprintf("ALTER ROLE %s REPLICATION", roles.Relay)); err != nil {
		t.Fatal(err)
	}
	pgtest.RequestCapture(t, db, "wal") // as the owner
	r := relaytest.Start(t, roles.RelayURL)
	pgtest.WaitCapture(t, db, "wal")
	var slot string
	if err := db.Pool.QueryRow(ctx, "SELECT slot_name FROM relay.capture").Scan(&slot); err != nil {
		t.Fatal(err)
	}
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	producer := session(t, roles.ProducerURL)
	insertAs(t, producer, "inserted by the producer", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 20*time.Second)); got[0] != "inserted by the producer" {
		t.Fatalf("received %q, want the producer's template", got)
	}

	for _, who := range []struct{ name, url string }{{"producer", roles.ProducerURL}, {"unrelated login", roles.LoginURL}} {
		t.Run(who.name, func(t *testing.T) {
			conn := session(t, who.url)
			// The slot's changes, through SQL: the REPLICATION attribute is
			// checked before the slot is even looked at.
			denied(t, conn, "SELECT * FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', 'pgrelay')", slot)
			denied(t, conn, "SELECT pg_drop_replication_slot($1)", slot)
			denied(t, conn, "SELECT pg_create_logical_replication_slot('pgrelay_stolen', 'pgoutput')")
			// ... and over the replication protocol.
			rc, err := walcapture.ReplicationConnector(who.url, "pgrelay-attack")(ctx)
			if err == nil {
				rc.Close(ctx)
				t.Errorf("a %s opened a replication connection", who.name)
			}
			// The publication and the mode belong to the owner.
			denied(t, conn, "ALTER PUBLICATION pgrelay SET (publish = 'insert, update')")
			denied(t, conn, "DROP PUBLICATION pgrelay")
			denied(t, conn, "SELECT relay.set_capture('trigger')")
			denied(t, conn, "SELECT relay.complete_capture_switch()")
			denied(t, conn, "SELECT relay.capture_slot_lost($1, 'forged')", slot)
			denied(t, conn, "UPDATE relay.capture SET applied_lsn = '0/0'")
			denied(t, conn, "SELECT relay.append_captured('templates', '[]')")
		})
	}

	// Nothing moved: wal is still in force on the same slot, and rows keep
	// arriving.
	var mode, stillSlot string
	if err := db.Pool.QueryRow(ctx, "SELECT mode, slot_name FROM relay.capture").Scan(&mode, &stillSlot); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" || stillSlot != slot {
		t.Fatalf("after the attempts: capture mode %s on slot %s, want wal on %s", mode, stillSlot, slot)
	}
	insertAs(t, producer, "after the attempts", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 20*time.Second)); got[0] != "after the attempts" {
		t.Fatalf("received %q, want the producer's second template", got)
	}
	assertLogHoldsEveryTemplateOnce(t, db)
}
