package walcapture_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

const appName = "pgrelay-walcapture-test"

func connectFor(db *pgtest.DB) func(ctx context.Context) (*pgx.Conn, error) {
	return func(ctx context.Context) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(db.URL)
		if err != nil {
			return nil, err
		}
		cfg.RuntimeParams["application_name"] = appName
		return pgx.ConnectConfig(ctx, cfg)
	}
}

// startCapture runs a capture on db until the test ends.
func startCapture(t *testing.T, db *pgtest.DB, mutate func(*walcapture.Config)) *walcapture.Status {
	t.Helper()
	status := &walcapture.Status{}
	cfg := walcapture.Config{
		Connect:            connectFor(db),
		ConnectReplication: walcapture.ReplicationConnector(db.URL, appName),
		IdleCheck:          50 * time.Millisecond,
		Observer:           status,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = walcapture.New(cfg, relaytest.Logger()).Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return status
}

// logMatchesTable checks that every template is in the log exactly once,
// with the row as to_jsonb gives it, the audience its topic's function
// gives (as a set: the function's order is not fixed) and its creator as actor, and that the log holds nothing else.
func logMatchesTable(ctx context.Context, db *pgtest.DB) error {
	var templates, missing, repeated, wrong, phantoms int
	err := db.Pool.QueryRow(ctx, `
WITH per_row AS (
    SELECT t.id, count(e.id) AS n,
           bool_and(e.payload = to_jsonb(t)
                    AND e.audience @> coalesce(relay.templates_audience(t), '{}') AND e.audience <@ coalesce(relay.templates_audience(t), '{}')
                    AND e.actor IS NOT DISTINCT FROM t.created_by) AS ok
      FROM templates t
      LEFT JOIN relay.events e ON e.topic = 'templates' AND e.payload->>'id' = t.id
     GROUP BY t.id)
SELECT (SELECT count(*) FROM per_row),
       (SELECT count(*) FROM per_row WHERE n = 0),
       (SELECT count(*) FROM per_row WHERE n > 1),
       (SELECT count(*) FROM per_row WHERE n > 0 AND NOT ok),
       (SELECT count(*) FROM relay.events e WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.id = e.payload->>'id'))`).
		Scan(&templates, &missing, &repeated, &wrong, &phantoms)
	if err != nil {
		return err
	}
	if wrong > 0 {
		var sample string
		_ = db.Pool.QueryRow(ctx, `SELECT e.payload::text || ' | ' || to_jsonb(t)::text || ' | ' || e.audience::text || ' | ' || coalesce(relay.templates_audience(t), '{}')::text || ' | ' || coalesce(e.actor, 'NULL')
		  FROM templates t JOIN relay.events e ON e.topic = 'templates' AND e.payload->>'id' = t.id
		 WHERE NOT (e.payload = to_jsonb(t) AND e.audience @> coalesce(relay.templates_audience(t), '{}') AND e.audience <@ coalesce(relay.templates_audience(t), '{}') AND e.actor IS NOT DISTINCT FROM t.created_by) LIMIT 1`).Scan(&sample)
		return fmt.Errorf("%d rows differ, e.g. %s", wrong, sample)
	}
	if missing+repeated+wrong+phantoms > 0 {
		return fmt.Errorf("%d templates: %d missing from the log, %d in it more than once, %d with another row, audience or actor than the trigger gives, %d events of no template",
			templates, missing, repeated, wrong, phantoms)
	}
	return nil
}

// eventuallyLogMatchesTable waits for the capture to catch up, then checks
// once more after a pause, so a duplicate appended late is seen.
func eventuallyLogMatchesTable(t *testing.T, db *pgtest.DB, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = logMatchesTable(ctx, db); err == nil {
			time.Sleep(300 * time.Millisecond)
			if err = logMatchesTable(ctx, db); err == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal(err)
}

func insertTemplates(ctx context.Context, db *pgtest.DB, prefix string, n int) error {
	for i := range n {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1,loc-2}', 'zowi-1')`,
			fmt.Sprintf("%s-%d", prefix, i)); err != nil {
			return err
		}
	}
	return nil
}

func TestInWalModeEveryCommittedRowReachesTheLogOnceWithTheRowAudienceAndActorTheTriggerWouldHaveWritten(t *testing.T) {
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	ctx := context.Background()
	// Some in trigger mode first: the log must hold them once, too.
	if err := insertTemplates(ctx, db, "before", 5); err != nil {
		t.Fatal(err)
	}
	startCapture(t, db, nil)
	pgtest.SetCapture(t, db, "wal")
	var enabled string
	if err := db.Pool.QueryRow(ctx, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'pgrelay_templates'").Scan(&enabled); err != nil {
		t.Fatal(err)
	}
	if enabled != "D" {
		t.Fatalf("capture trigger state in wal mode = %q, want disabled (D)", enabled)
	}
	if err := insertTemplates(ctx, db, "after", 20); err != nil {
		t.Fatal(err)
	}
	// A rolled-back insert reaches nobody in this mode either.
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('rolled back', '{loc-1}', 'zowi-1')`); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	// Rows of a multi-row transaction keep their order.
	if _, err := db.Pool.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by)
	    SELECT 'multi-' || i, '{loc-3}', 'zolo-1' FROM generate_series(1, 50) i`); err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 20*time.Second)

	var outOfOrder int
	if err := db.Pool.QueryRow(ctx, `
SELECT count(*) FROM (
    SELECT (regexp_replace(payload->>'name', '^multi-', ''))::int AS i,
           lag((regexp_replace(payload->>'name', '^multi-', ''))::int) OVER (ORDER BY xid, id) AS prev
      FROM relay.events WHERE payload->>'name' LIKE 'multi-%') o
 WHERE prev IS NOT NULL AND i <> prev + 1`).Scan(&outOfOrder); err != nil {
		t.Fatal(err)
	}
	if outOfOrder != 0 {
		t.Fatalf("%d rows of one transaction are out of their insertion order in the log", outOfOrder)
	}
}

func TestRowsInsertedWithSessionReplicationRoleReplicaArePublishedInWalModeOnly(t *testing.T) {
	ctx := context.Background()
	insertAsReplica := func(db *pgtest.DB, name string) {
		t.Helper()
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1}', 'zowi-1')`, name)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	countEvents := func(db *pgtest.DB, name string) int {
		var n int
		if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM relay.events WHERE payload->>'name' = $1", name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	wal := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, wal)
	startCapture(t, wal, nil)
	pgtest.WaitCapture(t, wal, "wal")
	insertAsReplica(wal, "restored")
	eventuallyLogMatchesTable(t, wal, 20*time.Second)
	if n := countEvents(wal, "restored"); n != 1 {
		t.Fatalf("wal mode: a row inserted as replica is in the log %d times, want once", n)
	}

	// Trigger mode cannot see such rows: replica mode skips ordinary
	// triggers. This is why wal mode exists; the test pins the difference.
	trig := pgtest.New(t)
	relaytest.Seed(t, trig)
	insertAsReplica(trig, "restored")
	if n := countEvents(trig, "restored"); n != 0 {
		t.Fatalf("trigger mode: a row inserted as replica is in the log %d times; the capture trigger was expected not to fire", n)
	}
}

func TestACaptureKilledBetweenTheLogCommitAndTheSlotConfirmationOrInsideABatchLosesAndRepeatsNothing(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Die right after every third log commit (ten times), before the slot
	// hears of it: the next session is streamed those transactions again.
	var commits, deaths atomic.Int64
	startCapture(t, db, func(cfg *walcapture.Config) {
		cfg.AfterCommit = func(pglogrepl.LSN) error {
			if commits.Add(1)%3 == 0 && deaths.Load() < 10 {
				deaths.Add(1)
				return errors.New("simulated crash after the log commit")
			}
			return nil
		}
	})
	pgtest.WaitCapture(t, db, "wal")

	// Kill its sessions now and then, whatever they are doing: a log
	// transaction in the middle of its appends is rolled back.
	var terminated atomic.Int64
	stopKilling := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for terminated.Load() < 5 {
			select {
			case <-stopKilling:
				return
			case <-time.After(150 * time.Millisecond):
			}
			tag, err := db.Pool.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()", appName)
			if err == nil {
				terminated.Add(tag.RowsAffected())
			}
		}
	}()
	// Producers insert until both kinds of death happened a few times (the
	// capture sleeps a second after each, so a fixed number of rows may be
	// written before any session was there to be killed).
	deadline := time.Now().Add(60 * time.Second)
	enough := func() bool {
		return (deaths.Load() >= 10 && terminated.Load() >= 3) || time.Now().After(deadline)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := 0; !enough(); batch++ {
				if err := insertTemplates(ctx, db, fmt.Sprintf("p%d-%d", p, batch), 20); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stopKilling)
	<-killerDone
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 60*time.Second)
	if deaths.Load() == 0 || terminated.Load() == 0 {
		t.Fatalf("the capture died %d times after a commit and had %d sessions terminated; the test needs both", deaths.Load(), terminated.Load())
	}
	t.Logf("%d crashes after a log commit, %d sessions terminated", deaths.Load(), terminated.Load())
}

func TestATransactionOfTenThousandRowsAndRowsOfOneMegabyteReachTheLogWhole(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx := context.Background()
	var batches atomic.Int64
	startCapture(t, db, func(cfg *walcapture.Config) {
		cfg.AfterCommit = func(pglogrepl.LSN) error { batches.Add(1); return nil }
	})
	pgtest.WaitCapture(t, db, "wal")
	if _, err := db.Pool.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by)
	    SELECT 'bulk-' || i, '{loc-1}', 'zowi-1' FROM generate_series(1, 10000) i`); err != nil {
		t.Fatal(err)
	}
	// Three rows of 1 MB each (a name is text of any length), in one
	// transaction: more than one append's worth of bytes.
	big := strings.Repeat("ü", 1<<19) // 1 MiB of UTF-8
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for i := range 3 {
			if _, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-2}', 'zewi-1')`,
				fmt.Sprintf("%d:%s", i, big)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 60*time.Second)
	// One source transaction is one log transaction, however many appends
	// it takes: readers never see a part of it.
	var xids int
	if err := db.Pool.QueryRow(ctx, "SELECT count(DISTINCT xid) FROM relay.events WHERE payload->>'name' LIKE 'bulk-%'").Scan(&xids); err != nil {
		t.Fatal(err)
	}
	if xids != 1 {
		t.Fatalf("the 10,000 rows of one transaction are in %d log transactions, want 1", xids)
	}
}

// produce inserts from 4 sessions until stop is closed and reports how many.
func produce(ctx context.Context, db *pgtest.DB, stop <-chan struct{}) (func() (int, error), error) {
	var wg sync.WaitGroup
	var n atomic.Int64
	var firstErr atomic.Value
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Half in transactions of two rows, some repeatable read
				// transactions that took their snapshot before inserting.
				err := pgx.BeginTxFunc(ctx, db.Pool, pgx.TxOptions{IsoLevel: map[bool]pgx.TxIsoLevel{true: pgx.RepeatableRead, false: pgx.ReadCommitted}[i%3 == 0]}, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "SELECT count(*) FROM relay.capture"); err != nil {
						return err
					}
					rows := 1 + i%2
					for r := range rows {
						if _, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1}', 'zowi-2')`,
							fmt.Sprintf("load-%d-%d-%d", p, i, r)); err != nil {
							return err
						}
					}
					n.Add(int64(rows))
					return nil
				})
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") {
					continue // a deadlock with a switch: the producer retries, as apps do
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	return func() (int, error) {
		wg.Wait()
		if err, _ := firstErr.Load().(error); err != nil {
			return int(n.Load()), err
		}
		return int(n.Load()), nil
	}, nil
}

func TestSwitchingCaptureModesBackAndForthUnderConcurrentInsertsLosesAndRepeatsNothing(t *testing.T) {
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	ctx := context.Background()
	startCapture(t, db, nil)
	stop := make(chan struct{})
	wait, _ := produce(ctx, db, stop)
	for i, mode := range []string{"wal", "trigger", "wal", "trigger", "wal"} {
		time.Sleep(300 * time.Millisecond)
		pgtest.SetCapture(t, db, mode)
		t.Logf("switch %d to %s", i+1, mode)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	eventuallyLogMatchesTable(t, db, 60*time.Second)
	t.Logf("%d rows inserted across five switches", n)

	// Back to triggers for good: the slot goes once the switch is decoded.
	pgtest.SetCapture(t, db, "trigger")
	// The drop is not transactional and shows at once; relay.capture
	// forgets the slot when the dropping transaction commits.
	relaytest.Eventually(t, 20*time.Second, "the drained slot is dropped and forgotten", func() bool {
		var slots int
		var known bool
		_ = db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
		                                  (SELECT slot_name IS NOT NULL FROM relay.capture)`).Scan(&slots, &known)
		return slots == 0 && !known
	})
	eventuallyLogMatchesTable(t, db, 10*time.Second)
}

func TestWalModeIsRefusedWithAnErrorNamingWalLevelWhenTheServerCannotDecode(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	// This server has wal_level = logical (tests need it), so the check is
	// called with the level a default server has.
	_, err := db.Pool.Exec(ctx, "SELECT relay.check_wal_level('replica')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "wal_level = logical") || !strings.Contains(pgErr.Message, "wal_level = replica") {
		t.Fatalf("error for wal_level replica = %v, want one naming wal_level = logical and the server's replica", err)
	}
	if pgErr.Code != "55000" || !strings.Contains(pgErr.Hint, "ALTER SYSTEM SET wal_level = logical") {
		t.Fatalf("code %s hint %q, want 55000 and how to set it", pgErr.Code, pgErr.Hint)
	}
	_, err = db.Pool.Exec(ctx, "SELECT relay.set_capture('logical')")
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "unknown capture mode 'logical'") {
		t.Fatalf("set_capture('logical') = %v, want an error naming the unknown mode", err)
	}
	// On this server the check passes, and set_capture does run it.
	var body string
	if err := db.Pool.QueryRow(ctx, "SELECT prosrc FROM pg_proc WHERE proname = 'set_capture'").Scan(&body); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "relay.check_wal_level(current_setting('wal_level'))") {
		t.Fatal("relay.set_capture does not check the server's wal_level")
	}
}
