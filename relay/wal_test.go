package relay_test

// Capture mode wal at the relay level: what subscribers see. The invariant
// checker derives what each subscriber should receive from the log, so a
// row the capture never appended would go unnoticed there; these helpers
// compare the log with the table itself.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/workload"
)

// logVersusTable counts committed templates missing from the log and those
// in it more than once.
func logVersusTable(t *testing.T, db *pgtest.DB) (templates, missing, repeated int) {
	t.Helper()
	err := db.Pool.QueryRow(context.Background(), `
WITH logged AS (
    -- One pass over the log: a template's events counted by its id.
    SELECT e.payload->>'id' AS id, count(*) AS n
      FROM relay.events e WHERE e.topic = 'templates' GROUP BY 1)
SELECT count(*), count(*) FILTER (WHERE l.n IS NULL), count(*) FILTER (WHERE l.n > 1)
  FROM templates t LEFT JOIN logged l ON l.id = t.id`).
		Scan(&templates, &missing, &repeated)
	if err != nil {
		t.Fatalf("compare the log with the table: %v", err)
	}
	return templates, missing, repeated
}

// waitLogHasEveryTemplate waits until every committed template is in the
// log: at once in trigger mode, once the capture caught up in wal mode.
func waitLogHasEveryTemplate(t *testing.T, db *pgtest.DB) {
	t.Helper()
	relaytest.Eventually(t, faultTimeout, "every committed template is in the log", func() bool {
		_, missing, _ := logVersusTable(t, db)
		return missing == 0
	})
}

// assertLogHoldsEveryTemplateOnce checks that each committed template is in
// the log exactly once: nothing lost or repeated on the way in, whichever
// the capture mode.
func assertLogHoldsEveryTemplateOnce(t *testing.T, db *pgtest.DB) {
	t.Helper()
	waitLogHasEveryTemplate(t, db)
	if n, missing, repeated := logVersusTable(t, db); missing+repeated > 0 {
		t.Fatalf("%d committed templates: %d missing from the log, %d in it more than once", n, missing, repeated)
	}
}

func TestInWalModeSubscribersReceiveRowsInsertedAsReplicaAndAreNeverSentTheirOwn(t *testing.T) {
	t.Parallel()
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	pgtest.WaitCapture(t, db, "wal")
	zolo := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	zowi := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
	ctx := context.Background()

	relaytest.InsertTemplate(t, db, "plain insert", "zowi-1", "loc-1")
	// As logical replication's apply and pg_restore --disable-triggers
	// insert: with triggers off. Only the WAL sees this row.
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('restored', '{loc-1}', 'zowi-1')`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	got := names(t, zolo.Collect(t, 2, 20*time.Second))
	if strings.Join(got, ",") != "plain insert,restored" {
		t.Fatalf("zolo-1 received %v, want [plain insert restored]", got)
	}
	// zowi-1 wrote both: the actor never receives its own rows.
	zowi.Quiet(t, 300*time.Millisecond)
	assertLogHoldsEveryTemplateOnce(t, db)

	// The only relay is the sequencer: it appended both, and shows its slot.
	resp, err := http.Get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pgrelay_capture_events_total 2\n", "pgrelay_capture_slot_lost 0\n", "pgrelay_capture_retained_wal_bytes ", "pgrelay_capture_slot_lag_bytes ", "pgrelay_capture_lag_seconds "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestSwitchingCaptureModesBothWaysUnderLoadLosesAndRepeatsNothingForAnySubscriber(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	_, urls := startRelays(t, db, 3)
	sc := workload.Start(t, db, urls, workload.Options{})
	ctx := context.Background()
	var injected []string
	for _, mode := range []string{"wal", "trigger", "wal", "trigger", "wal"} {
		if err := sc.Producers.WaitCommitted(ctx, 20, faultTimeout); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		pgtest.SetCapture(t, db, mode)
		injected = append(injected, fmt.Sprintf("to %s in %s", mode, time.Since(start).Round(time.Millisecond)))
	}
	if err := sc.Producers.WaitCommitted(ctx, 20, faultTimeout); err != nil {
		t.Fatal(err)
	}
	sc.Finish("capture mode switched "+strings.Join(injected, ", "), faultTimeout)
	assertLogHoldsEveryTemplateOnce(t, db)
}

func TestTheSequencerKilledWhileItStreamsTheSlotIsSucceededWithoutLossOrRepeat(t *testing.T) {
	t.Parallel()
	db := pgtest.NewInMode(t, "wal")
	bin := relaytest.BuildRelay(t)
	procs := make([]*relaytest.Process, 3)
	urls := make([]string, len(procs))
	for i := range procs {
		procs[i] = relaytest.StartProcess(t, bin, db.URL)
		urls[i] = procs[i].URL
	}
	pgtest.WaitCapture(t, db, "wal")
	sc := workload.Start(t, db, urls, workload.Options{})
	ctx := context.Background()
	var injected []string
	// Kill the sequencer twice while the producers insert; the next
	// elected relay resumes the slot from what the log holds.
	for round := range 2 {
		if err := sc.Producers.WaitCommitted(ctx, 40, faultTimeout); err != nil {
			t.Fatal(err)
		}
		var victim *relaytest.Process
		relaytest.Eventually(t, faultTimeout, "a relay is the sequencer", func() bool {
			for _, p := range procs {
				if p != nil && isSequencer(t, p.URL) {
					victim = p
					return true
				}
			}
			return false
		})
		victim.Kill(t)
		for i, p := range procs {
			if p == victim {
				procs[i] = nil
			}
		}
		injected = append(injected, fmt.Sprintf("round %d: SIGKILL of the sequencer %s", round+1, victim))
	}
	relaytest.Eventually(t, faultTimeout, "the last relay became the sequencer", func() bool {
		for _, p := range procs {
			if p != nil && isSequencer(t, p.URL) {
				return true
			}
		}
		return false
	})
	if err := sc.Producers.WaitCommitted(ctx, 40, faultTimeout); err != nil {
		t.Fatal(err)
	}
	sc.Finish(strings.Join(injected, "; "), faultTimeout)
	assertLogHoldsEveryTemplateOnce(t, db)
}
