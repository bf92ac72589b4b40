// Package pgrestart_test restarts the PostgreSQL cluster under running
// relays, producers and subscribers. Every other test on the cluster would
// see the restart too, so it runs only when PGRELAY_TEST_RESTART_POSTGRES=1
// is set, which .ci/run does in a `go test` invocation of its own, after the
// main suite has finished.
package pgrestart_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/workload"
)

// timeout bounds every wait: a restart takes seconds, reconnect backoff a
// few more, and the machine is shared.
const timeout = 2 * time.Minute

func TestPostgresRestartsLoseNothingDuplicateNothingLeakNothing(t *testing.T) {
	if os.Getenv("PGRELAY_TEST_RESTART_POSTGRES") != "1" {
		t.Skip("restarts the PostgreSQL cluster, which every concurrent test would see: " +
			"set PGRELAY_TEST_RESTART_POSTGRES=1 and run this package on its own (.ci/run does)")
	}
	restart := restartCommand(t)
	// One capture mode after the other, never at once: each restarts the
	// cluster under the other's feet otherwise.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		restartsUnderLoad(t, restart, mode)
	})
}

// restartsUnderLoad restarts the cluster twice under three relays,
// producers and subscribers of a database in capture mode mode, and checks
// every subscriber's stream against what committed.
func restartsUnderLoad(t *testing.T, restart []string, mode string) {
	db := pgtest.NewInMode(t, mode)
	relays := make([]*relaytest.Relay, 3)
	urls := make([]string, len(relays))
	for i := range relays {
		relays[i] = relaytest.Start(t, db.URL)
		urls[i] = relays[i].URL
	}
	pgtest.WaitCapture(t, db, mode)
	sc := workload.Start(t, db, urls, workload.Options{})
	ctx := context.Background()
	const restarts = 2
	for range restarts {
		if err := sc.Producers.WaitCommitted(ctx, 30, timeout); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command(restart[0], restart[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(restart, " "), err, out)
		}
		waitForServer(t, db)
		// The test's own pool holds connections the restart killed.
		db.Pool.Reset()
		relaytest.Eventually(t, timeout, "every relay ready again", func() bool {
			for _, r := range relays {
				if !r.Server.Ready() {
					return false
				}
			}
			return true
		})
		t.Logf("PostgreSQL restarted; relays ready again after %s", time.Since(start).Round(time.Millisecond))
		// Producers retry failed inserts: traffic resumes.
		if err := sc.Producers.WaitCommitted(ctx, 30, timeout); err != nil {
			t.Fatal(err)
		}
	}
	sc.Finish(fmt.Sprintf("%d restarts of the PostgreSQL cluster (%s) while producing, capture mode %s", restarts, strings.Join(restart, " "), mode), timeout)
	// A slot survives a restart (it is on disk): the sequencer that wins
	// after it resumes the slot, with no loss to report and no reset.
	var inForce string
	var lost bool
	var resets, repeated int
	if err := db.Pool.QueryRow(ctx, `SELECT mode, slot_lost_at IS NOT NULL,
	                                        (SELECT count(*) FROM relay.events WHERE topic = 'pgrelay.reset'),
	                                        (SELECT count(*) FROM (SELECT 1 FROM relay.events WHERE topic = 'templates'
	                                                                GROUP BY payload->>'id' HAVING count(*) > 1) r)
	                                   FROM relay.capture`).Scan(&inForce, &lost, &resets, &repeated); err != nil {
		t.Fatal(err)
	}
	// The checker reads its expectations from the log, so a row appended
	// twice would look right to it: count those here.
	if inForce != mode || lost || resets != 0 || repeated != 0 {
		t.Fatalf("after the restarts: capture mode %s, slot loss on record %v, %d reset markers, %d templates in the log more than once; want %s, false, 0, 0",
			inForce, lost, resets, repeated, mode)
	}
}

// restartCommand is how to restart the cluster tests run against:
// PGRELAY_TEST_RESTART_COMMAND if set (split on spaces), else pg_ctlcluster
// on the newest installed version's main cluster.
func restartCommand(t *testing.T) []string {
	t.Helper()
	if cmd := os.Getenv("PGRELAY_TEST_RESTART_COMMAND"); cmd != "" {
		return strings.Fields(cmd)
	}
	entries, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(entries) == 0 {
		t.Fatalf("find the PostgreSQL cluster to restart (set PGRELAY_TEST_RESTART_COMMAND): %v", err)
	}
	versions := make([]string, 0, len(entries))
	for _, e := range entries {
		versions = append(versions, e.Name())
	}
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	return []string{"pg_ctlcluster", "--skip-systemctl-redirect", versions[len(versions)-1], "main", "restart"}
}

// versionLess orders "9.6" < "15" < "16".
func versionLess(a, b string) bool {
	var am, an, bm, bn int
	fmt.Sscanf(a, "%d.%d", &am, &an)
	fmt.Sscanf(b, "%d.%d", &bm, &bn)
	return am < bm || am == bm && an < bn
}

// waitForServer waits until the test database accepts connections again.
func waitForServer(t *testing.T, db *pgtest.DB) {
	t.Helper()
	relaytest.Eventually(t, timeout, "PostgreSQL accepting connections", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		return conn.Ping(ctx) == nil
	})
}
