package relay_test

// Fault tests: concurrent producers (several goroutines, varied audiences,
// two orgs), subscribers of every kind spread over three relays through
// resilient clients that resume with Last-Event-ID, a fault injected while
// events flow, and the invariant checker comparing every subscriber's
// deliveries with what SQL says it should receive. Each test logs what it
// injected and the counts.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/invariant"
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

// killRounds terminates this database's sessions with the given application
// names once per round, after the producers have committed a few more
// transactions, waits until every relay's listener is back, and returns a
// line per round saying what it did.
func killRounds(t *testing.T, db *pgtest.DB, sc *workload.Scenario, relays int, rounds int, what string, appNames ...string) []string {
	t.Helper()
	var done []string
	for round := range rounds {
		if err := sc.Producers.WaitCommitted(context.Background(), 15, faultTimeout); err != nil {
			t.Fatal(err)
		}
		before := backendPIDs(t, db, relay.ListenerApplicationName)
		n := terminate(t, db, appNames...)
		done = append(done, fmt.Sprintf("round %d: terminated %d %s backends", round+1, n, what))
		waitNewListeners(t, db, relays, before)
	}
	return done
}

func TestTerminatedRelayBackendsLoseNothingDuplicateNothingLeakNothing(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		relays, urls := startRelays(t, db, 3)
		pgtest.WaitCapture(t, db, mode)
		sc := workload.Start(t, db, urls, workload.Options{})
		ctx := context.Background()

		// The LISTEN backend, repeatedly, while events flow; then every session
		// of every relay: listener, sequencer and pool.
		injected := killRounds(t, db, sc, len(relays), 5, "pgrelay-listener", relay.ListenerApplicationName)
		injected = append(injected, killRounds(t, db, sc, len(relays), 3, "pgrelay and pgrelay-listener",
			relay.ListenerApplicationName, relay.ApplicationName)...)
		if err := sc.Producers.WaitCommitted(ctx, 15, faultTimeout); err != nil {
			t.Fatal(err)
		}
		sc.Finish(strings.Join(injected, "; "), faultTimeout)
		assertLogHoldsEveryTemplateOnce(t, db)
	})
}

func TestSIGKILLedRelaysClientsResumeOnAnotherRelay(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		bin := relaytest.BuildRelay(t)
		procs := make([]*relaytest.Process, 3)
		urls := make([]string, len(procs))
		for i := range procs {
			procs[i] = relaytest.StartProcess(t, bin, db.URL)
			urls[i] = procs[i].URL
		}
		pgtest.WaitCapture(t, db, mode)
		sc := workload.Start(t, db, urls, workload.Options{})
		ctx := context.Background()
		if err := sc.Producers.WaitCommitted(ctx, 30, faultTimeout); err != nil {
			t.Fatal(err)
		}
		// The first relay started is, barring a race, the sequencer: killing
		// it also tests that another relay takes the role over.
		victim := procs[0]
		wasSequencer := isSequencer(t, victim.URL)
		victim.Kill(t)
		// Clients whose first relay was the victim must reconnect elsewhere.
		onVictim := []*invariant.Client{}
		for i, sub := range workload.Subscribers() {
			if i%len(procs) == 0 {
				onVictim = append(onVictim, sc.Clients[sub])
			}
		}
		relaytest.Eventually(t, faultTimeout, "the killed relay's clients resumed on another relay", func() bool {
			for _, c := range onVictim {
				if c.Connects() < 2 {
					return false
				}
			}
			return true
		})
		relaytest.Eventually(t, faultTimeout, "another relay became the sequencer", func() bool {
			return isSequencer(t, procs[1].URL) || isSequencer(t, procs[2].URL)
		})
		if err := sc.Producers.WaitCommitted(ctx, 30, faultTimeout); err != nil {
			t.Fatal(err)
		}
		sc.Finish(fmt.Sprintf("SIGKILL of %s (sequencer: %v) while producing; its %d clients resumed on the other two relays",
			victim, wasSequencer, len(onVictim)), faultTimeout)
		assertLogHoldsEveryTemplateOnce(t, db)
	})
}

// isSequencer asks a relay's /readyz whether it is the sequencer.
func isSequencer(t *testing.T, base string) bool {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var body struct {
		Sequencer bool `json:"sequencer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false
	}
	return body.Sequencer
}

func TestSlowStalledAndReconnectingClientsDoNotDisturbOthers(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	// A small queue and a short write timeout, so the misbehaving clients
	// are cut off quickly; rows of 16 KB fill socket buffers soon.
	relays, urls := startRelays(t, db, 3, func(c *relay.Config) {
		c.QueueSize = 16
		c.WriteTimeout = time.Second
	})
	slowest := func() uint64 {
		var n uint64
		for _, r := range relays {
			n += r.Server.Hub().Stats().SlowConsumers
		}
		return n
	}
	release := make(chan struct{})
	const (
		slow      = "zewi-a"  // reads, but 20 ms per event
		stalled   = "zowi-a"  // stops reading after 5 events until it is cut off
		reconnect = "zolo-a1" // closes its stream after every event and reconnects at once
	)
	sc := workload.Start(t, db, urls, workload.Options{
		RowPadding: 16 << 10,
		Customize: func(sub string, c *invariant.Client) {
			switch sub {
			case slow:
				c.BeforeEvent = func(ctx context.Context) {
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
				}
			case stalled:
				events := 0
				c.BeforeEvent = func(ctx context.Context) {
					events++
					if events == 5 {
						select {
						case <-ctx.Done():
						case <-release:
						}
					}
				}
			case reconnect:
				c.EventsPerConnection = 1
			}
		},
	})
	// The stalled client stops reading; the relay must cut it off (its
	// queue overflows or a write times out) rather than wait for it.
	relaytest.Eventually(t, faultTimeout, "the stalled client cut off", func() bool {
		for _, r := range relays {
			if slices.Contains(r.Server.Hub().Connected(), stalled) {
				return false
			}
		}
		return slowest() > 0
	})
	close(release)
	ctx := context.Background()
	if err := sc.Producers.WaitCommitted(ctx, 30, faultTimeout); err != nil {
		t.Fatal(err)
	}
	report := sc.Finish(fmt.Sprintf("a slow reader (%s, 20 ms per event), a reader that stopped (%s) and a client reconnecting after every event (%s); 16 KB rows, queue 16, write timeout 1s",
		slow, stalled, reconnect), faultTimeout)
	t.Logf("slow consumers cut off: %d; streams opened by %s: %d, by %s: %d",
		slowest(), stalled, sc.Clients[stalled].Connects(), reconnect, sc.Clients[reconnect].Connects())
	if report.Delivered == 0 {
		t.Errorf("nothing delivered")
	}
	if sc.Clients[stalled].Connects() < 2 {
		t.Errorf("the stalled client never had to resume")
	}
	if got, want := sc.Clients[reconnect].Connects(), int64(len(sc.Checker.ReceivedIDs(reconnect))); got < want {
		t.Errorf("the reconnecting client opened %d streams for %d events, want one per event", got, want)
	}
}

func TestALongProducerTransactionHoldsLaterEventsBackThenAllArriveInIDOrder(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		_, urls := startRelays(t, db, 3)
		pgtest.WaitCapture(t, db, mode)
		sc := workload.Start(t, db, urls, workload.Options{})
		ctx := context.Background()
		if err := sc.Producers.WaitCommitted(ctx, 20, faultTimeout); err != nil {
			t.Fatal(err)
		}
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // committed below; rollback only on failure
		insert := func(name string) {
			t.Helper()
			if _, err := tx.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{a1,a2}', 'zewi-a')`, name); err != nil {
				t.Fatal(err)
			}
		}
		insert("long transaction, first row")
		var xid int64
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		committedBefore := sc.Producers.Committed()
		// Others commit while it stays open: none of their events may be
		// delivered yet, because the long transaction's rows will sort before
		// them (its xid is smaller) and nothing may be delivered out of order.
		if err := sc.Producers.WaitCommitted(ctx, 30, faultTimeout); err != nil {
			t.Fatal(err)
		}
		insert("long transaction, last row")
		held := sc.Producers.Committed() - committedBefore
		for _, sub := range workload.Subscribers() {
			for _, id := range sc.Checker.ReceivedIDs(sub) {
				if id > fmt.Sprintf("%016x", xid) {
					t.Errorf("%s received %s while transaction %d was still open", sub, id, xid)
				}
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		sc.Finish(fmt.Sprintf("a transaction (xid %d) held open while %d other transactions committed, then committed",
			xid, held), faultTimeout)
		assertLogHoldsEveryTemplateOnce(t, db)
	})
}

func TestWebSocketSubscribersLoseNothingThroughKilledBackendsAndARelayShutdown(t *testing.T) {
	t.Parallel()
	// Once per capture mode, one after the other: the guarantees are the same.
	pgtest.InEachCaptureMode(t, func(t *testing.T, mode string) {
		db := pgtest.NewInMode(t, mode)
		relays, urls := startRelays(t, db, 3)
		// Every other subscriber on WebSocket, the rest on SSE, so both
		// transports share the same faults.
		var i int
		pgtest.WaitCapture(t, db, mode)
		sc := workload.Start(t, db, urls, workload.Options{
			Customize: func(sub string, c *invariant.Client) {
				c.WebSocket = i%2 == 0
				i++
			},
		})
		ctx := context.Background()

		injected := killRounds(t, db, sc, len(relays), 3, "pgrelay and pgrelay-listener",
			relay.ListenerApplicationName, relay.ApplicationName)
		// A graceful shutdown closes WebSocket streams with 1012 and SSE streams
		// with a final comment; their clients resume on the other relays.
		if err := sc.Producers.WaitCommitted(ctx, 15, faultTimeout); err != nil {
			t.Fatal(err)
		}
		relays[0].Stop(t)
		injected = append(injected, "stopped relay 1 of 3 (graceful shutdown)")
		if err := sc.Producers.WaitCommitted(ctx, 30, faultTimeout); err != nil {
			t.Fatal(err)
		}
		sc.Finish(strings.Join(injected, "; "), faultTimeout)
		assertLogHoldsEveryTemplateOnce(t, db)
	})
}
