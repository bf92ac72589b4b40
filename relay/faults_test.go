package relay_test

// Fault tests: concurrent producers (several goroutines, varied audiences,
// two orgs), subscribers of every kind spread over three relays through
// resilient clients that resume with Last-Event-ID, a fault injected while
// events flow, and the invariant checker comparing every subscriber's
// deliveries with what SQL says it should receive. Each test logs what it
// injected and the counts.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/workload"
	"github.com/pgrelay/pgrelay/relay"
)

// faultTimeout bounds every wait of a fault test: generous, because other
// suites share this machine's two cores.
const faultTimeout = 90 * time.Second

func startRelays(t *testing.T, db *pgtest.DB, n int, mutate ...func(*relay.Config)) ([]*relaytest.Relay, []string) {
	t.Helper()
	relays := make([]*relaytest.Relay, n)
	urls := make([]string, n)
	for i := range relays {
		relays[i] = relaytest.Start(t, db.URL, mutate...)
		urls[i] = relays[i].URL
	}
	return relays, urls
}

// backendPIDs returns the pids of this database's sessions with the given
// application names.
func backendPIDs(t *testing.T, db *pgtest.DB, appNames ...string) []int32 {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `
SELECT pid FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = ANY ($1)
 ORDER BY pid`, appNames)
	if err != nil {
		t.Fatalf("list backends: %v", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatalf("list backends: %v", err)
	}
	return pids
}

// terminate kills this database's sessions with the given application names
// and returns how many it killed.
func terminate(t *testing.T, db *pgtest.DB, appNames ...string) int {
	t.Helper()
	var n int
	err := db.Pool.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = ANY ($1)`, appNames).Scan(&n)
	if err != nil {
		t.Fatalf("terminate backends: %v", err)
	}
	return n
}

// waitNewListeners waits until n listener sessions exist and none of them is
// one of the killed pids: every relay has reconnected.
func waitNewListeners(t *testing.T, db *pgtest.DB, n int, killed []int32) {
	t.Helper()
	relaytest.Eventually(t, faultTimeout, fmt.Sprintf("%d relays' listeners reconnected", n), func() bool {
		pids := backendPIDs(t, db, relay.ListenerApplicationName)
		if len(pids) != n {
			return false
		}
		for _, p := range pids {
			if slices.Contains(killed, p) {
				return false
			}
		}
		return true
	})
}

func TestTerminatedRelayBackendsLoseNothingDuplicateNothingLeakNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relays, urls := startRelays(t, db, 3)
	sc := workload.Start(t, db, urls, workload.Options{})
	ctx := context.Background()
	var injected []string

	// The LISTEN backend, repeatedly, while events flow.
	for round := range 5 {
		if err := sc.Producers.WaitCommitted(ctx, 15, faultTimeout); err != nil {
			t.Fatal(err)
		}
		before := backendPIDs(t, db, relay.ListenerApplicationName)
		n := terminate(t, db, relay.ListenerApplicationName)
		injected = append(injected, fmt.Sprintf("round %d: terminated %d pgrelay-listener backends", round+1, n))
		waitNewListeners(t, db, len(relays), before)
	}
	// Every session of every relay: listener, sequencer and pool.
	for round := range 3 {
		if err := sc.Producers.WaitCommitted(ctx, 15, faultTimeout); err != nil {
			t.Fatal(err)
		}
		before := backendPIDs(t, db, relay.ListenerApplicationName)
		n := terminate(t, db, relay.ListenerApplicationName, relay.ApplicationName)
		injected = append(injected, fmt.Sprintf("round %d: terminated all %d pgrelay and pgrelay-listener backends", round+1, n))
		waitNewListeners(t, db, len(relays), before)
	}
	if err := sc.Producers.WaitCommitted(ctx, 15, faultTimeout); err != nil {
		t.Fatal(err)
	}
	sc.Finish(strings.Join(injected, "; "), faultTimeout)
}


