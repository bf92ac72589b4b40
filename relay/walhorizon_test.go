package relay_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// openWriteTransaction begins a transaction on conn and gives it an xid,
// as a transaction that wrote anything has: it is in every snapshot's list
// of running transactions until it ends.
func openWriteTransaction(t *testing.T, conn *pgx.Conn) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func TestInWalModeOpenTransactionsOfProducersAndOtherLoginsDoNotHoldDeliveryBackAndTheSwitchBackWaitsForThem(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, fmt.Sprintf("ALTER ROLE %s REPLICATION", roles.Relay)); err != nil {
		t.Fatal(err)
	}
	pgtest.RequestCapture(t, db, "wal")
	r := relaytest.Start(t, roles.RelayURL)
	pgtest.WaitCapture(t, db, "wal")
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	// The relay's role sees every session's xid (pg_read_all_stats, as
	// docs/roles.sql grants), so it can tell whose they are.
	old := openWriteTransaction(t, session(t, roles.ProducerURL))
	other := openWriteTransaction(t, session(t, roles.LoginURL))

	producer := session(t, roles.ProducerURL)
	insertAs(t, producer, "while they are open", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 10*time.Second)); got[0] != "while they are open" {
		t.Fatalf("received %v, want the template inserted while the two transactions are open", got)
	}

	// The owner may write the log in any mode (so may the relay's role):
	// its open transaction still holds delivery back.
	owner := openWriteTransaction(t, session(t, db.URL))
	insertAs(t, producer, "behind the owner", "zowi-1", "loc-1")
	client.Quiet(t, 2*time.Second)
	if err := owner.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := names(t, client.Collect(t, 1, 10*time.Second)); got[0] != "behind the owner" {
		t.Fatalf("received %v once the owner's transaction ended, want the template held behind it", got)
	}

	// Back to triggers: delivery is past the producer's open transaction,
	// so its triggers stay disabled until it has ended, and what it
	// inserts meanwhile reaches the log through the slot.
	var inForce string
	if err := db.Pool.QueryRow(ctx, "SELECT relay.set_capture('trigger')").Scan(&inForce); err != nil {
		t.Fatal(err)
	}
	if inForce != "wal" {
		t.Fatalf("set_capture('trigger') returned %s, want wal until the step completes", inForce)
	}
	// From the step on, readers are back on the full horizon: this one
	// waits for the two older transactions, as in trigger mode.
	insertAs(t, producer, "while the switch is pending", "zowi-1", "loc-1")
	var mode, enabled string
	err := db.Pool.QueryRow(ctx, `SELECT c.mode, t.tgenabled FROM relay.capture c, pg_trigger t WHERE t.tgname = 'pgrelay_templates'`).Scan(&mode, &enabled)
	if err != nil {
		t.Fatal(err)
	}
	if mode != "wal" || enabled != "D" {
		t.Fatalf("with an older transaction still open: capture mode %s, trigger %s; want wal and disabled (D)", mode, enabled)
	}
	if _, err := old.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('from the older transaction', '{loc-1}', 'zowi-1')`); err != nil {
		t.Fatal(err)
	}
	if err := old.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Its row went through the slot, appended after the template above.
	waitLogHasEveryTemplate(t, db)
	// The other login's transaction is older than the step too: the
	// switch waits for it as well, whoever it belongs to.
	if err := db.Pool.QueryRow(ctx, "SELECT mode FROM relay.capture").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Fatalf("capture mode %s while a transaction older than the step back is open, want wal", mode)
	}
	client.Quiet(t, 300*time.Millisecond)
	if err := other.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	got := names(t, client.Collect(t, 2, 10*time.Second))
	if strings.Join(got, ",") != "while the switch is pending,from the older transaction" {
		t.Fatalf("received %v once the older transactions ended, want [while the switch is pending from the older transaction]", got)
	}
	pgtest.WaitCapture(t, db, "trigger")
	insertAs(t, producer, "after the switch", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 20*time.Second)); got[0] != "after the switch" {
		t.Fatalf("received %v, want the template inserted after the switch", got)
	}
	client.Quiet(t, 300*time.Millisecond)
	assertLogHoldsEveryTemplateOnce(t, db)
}
