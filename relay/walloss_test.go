package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// dropCaptureSlot terminates the session streaming the database's
// replication slot and drops the slot: the loss a slot invalidated past
// max_slot_wal_keep_size also is, for the sequencer.
func dropCaptureSlot(t *testing.T, db *pgtest.DB) {
	t.Helper()
	ctx := context.Background()
	relaytest.Eventually(t, 20*time.Second, "the replication slot is dropped", func() bool {
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

func TestALostReplicationSlotSendsEveryLiveAndResumingSubscriberAResetAtTheGapThenLiveEventsAgain(t *testing.T) {
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		ctx := context.Background()
		pgtest.RequestCapture(t, db, "wal")
		r := relaytest.Start(t, db.URL)
		pgtest.WaitCapture(t, db, "wal")
		live := tr.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
		// Only one topic: the gap concerns every topic, so this stream is
		// reset too.
		oneTopic := tr.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{Topics: []string{"templates"}})

		relaytest.InsertTemplate(t, db, "before the loss", "zowi-1", "loc-1")
		before := live.Collect(t, 1, 20*time.Second)
		oneTopic.Collect(t, 1, 20*time.Second)

		dropCaptureSlot(t, db)
		relaytest.Eventually(t, 30*time.Second, "wal is in force again after the loss", func() bool {
			var ok bool
			err := db.Pool.QueryRow(ctx, "SELECT mode = 'wal' AND slot_lost_at IS NOT NULL FROM relay.capture").Scan(&ok)
			return err == nil && ok
		})
		var marker string
		if err := db.Pool.QueryRow(ctx, `SELECT lpad(to_hex(xid), 16, '0') || '-' || lpad(to_hex(id), 16, '0')
		                                   FROM relay.events WHERE topic = 'pgrelay.reset'`).Scan(&marker); err != nil {
			t.Fatalf("read the reset marker: %v", err)
		}
		relaytest.InsertTemplate(t, db, "after the loss", "zowi-1", "loc-1")

		check := func(who string, got []relaytest.Event) {
			t.Helper()
			if len(got) != 2 || got[0].Event != "reset" || got[0].ID != marker ||
				got[1].Event != "templates" || relaytest.TemplateNames(t, got[1:])[0] != "after the loss" {
				t.Fatalf("%s received %+v; want a reset with id %s (the marker), then the template inserted after the loss", who, got, marker)
			}
		}
		check("a live stream", live.Collect(t, 2, 30*time.Second))
		check("a stream of one topic", oneTopic.Collect(t, 2, 30*time.Second))

		// Resuming from before the gap: the reset comes at the marker's
		// place in the replay, and the replay goes on after it.
		resumed := tr.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{LastEventID: before[0].ID})
		check("a stream resumed from before the gap", resumed.Collect(t, 2, 30*time.Second))
		resumed.Quiet(t, 300*time.Millisecond)
		// From the reset's id, nothing is missed any more: no reset again.
		past := tr.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{LastEventID: marker})
		if got := past.Collect(t, 1, 30*time.Second); got[0].Event != "templates" {
			t.Fatalf("a stream resumed from the reset's id received %+v first, want the template after the loss", got[0])
		}
	})
}
