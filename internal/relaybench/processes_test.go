package relaybench

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// TestMain lets this test binary be its own worker process, as the
// relaybench command is.
func TestMain(m *testing.M) {
	if os.Getenv(WorkerEnv) != "" {
		if err := RunWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "relaybench worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestSplitSubscribersCoversEveryoneOnceInNearlyEqualSlices(t *testing.T) {
	for _, c := range []struct{ n, k int }{{50_000, 3}, {48, 2}, {7, 7}, {10, 4}} {
		sl := splitSubscribers(c.n, c.k)
		next := 0
		for _, s := range sl {
			if s[0] != next || s[1]-s[0] < c.n/c.k || s[1]-s[0] > c.n/c.k+1 {
				t.Errorf("split %d into %d: slice %v after %d", c.n, c.k, s, next)
			}
			next = s[1]
		}
		if next != c.n || len(sl) != c.k {
			t.Errorf("split %d into %d: %d slices ending at %d", c.n, c.k, len(sl), next)
		}
	}
}

func TestStreamsSpreadOverTwoProcessesGetEveryTemplateExactlyOnceEach(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := relaytest.Start(t, db.URL)
	b := relaytest.Start(t, db.URL)
	cfg := testConfig(t, a, b)
	cfg.DatabaseURL = db.URL
	cfg.RelayPIDs = nil
	cfg.Subscribers, cfg.Audience, cfg.Processes = 48, 12, 2
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Processes) != 2 || rep.Processes[0].Streams != 24 || rep.Processes[1].Streams != 24 ||
		rep.Processes[0].PID == rep.Processes[1].PID {
		t.Fatalf("processes %+v: want two processes of 24 streams each", rep.Processes)
	}
	if rep.Connect.Opened != cfg.Subscribers {
		t.Errorf("opened %d streams, want %d (%v)", rep.Connect.Opened, cfg.Subscribers, rep.Connect.Errors)
	}
	l := rep.Load
	templates := int64(cfg.Templates())
	if l.Committed != templates || l.Delivered != templates*int64(cfg.Audience) || l.Missing != 0 || l.MissingOpen != 0 || l.Extra != 0 ||
		l.Misordered != 0 || l.Foreign != 0 {
		t.Errorf("committed %d of %d, delivered %d of %d (missing %d, extra %d, misordered %d, foreign %d): want exact",
			l.Committed, templates, l.Delivered, templates*int64(cfg.Audience), l.Missing, l.Extra, l.Misordered, l.Foreign)
	}
	// The worker's deliveries count in the latency too, each exactly once,
	// whether it saw the commit acknowledgement before or after the event.
	wantMeasured := uint64(float64(templates)-cfg.Rate*cfg.Warmup.Seconds()) * uint64(cfg.Audience)
	if l.Latency.Count != wantMeasured || l.Latency.P50 <= 0 || l.FromSend.Count != wantMeasured {
		t.Errorf("latency %+v, from send %+v: want %d measured deliveries each", l.Latency, l.FromSend, wantMeasured)
	}
	if rep.DB == nil || rep.DB.Measured.TxPerSec <= 0 || rep.DB.Measured.RelayConns == 0 || rep.DB.Measured.Seconds < cfg.Duration.Seconds() {
		t.Errorf("database load %+v: want transactions and the relays' connections over the whole measured window", rep.DB)
	}
}

func TestStreamsOfAKilledRelayReconnectElsewhereAndMissNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	cfg := testConfig(t)
	cfg.DatabaseURL = db.URL // the server on which --spawn creates its database
	cfg.RelayPIDs = nil
	cfg.Spawn, cfg.Processes = 3, 2
	cfg.Subscribers, cfg.Audience, cfg.Rate = 60, 10, 50
	cfg.Warmup, cfg.Duration = time.Second, 3*time.Second
	cfg.Reconnect, cfg.ReconnectWindow = true, 500*time.Millisecond
	cfg.KillAfter, cfg.KillRelay, cfg.KillSignal = time.Second, 1, "KILL"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	st, l := rep.Storm, rep.Load
	if st == nil || l == nil {
		t.Fatalf("no storm or load results: %+v", rep)
	}
	if st.StreamsOnRelay != 20 || st.Reopened != 20 || st.GaveUp != 0 || st.WithoutID != 0 {
		t.Errorf("storm %+v: want the killed relay's 20 streams reopened, each after an id", st)
	}
	if st.AllReopenedMS <= 0 || st.CaughtUpMS < st.AllReopenedMS || st.Resumed.Count == 0 {
		t.Errorf("storm %+v: want the reopen and catch-up times and the resumed streams' latency", st)
	}
	templates := int64(cfg.Templates())
	if l.Committed != templates || l.Delivered != templates*int64(cfg.Audience) || l.Missing != 0 || l.Extra != 0 || l.Misordered != 0 {
		t.Errorf("committed %d of %d, delivered %d of %d (missing %d, extra %d, misordered %d): want every template exactly once to its audience across the reconnect",
			l.Committed, templates, l.Delivered, templates*int64(cfg.Audience), l.Missing, l.Extra, l.Misordered)
	}
	if l.StreamsEnded < 20 {
		t.Errorf("%d streams ended, want at least the killed relay's 20", l.StreamsEnded)
	}
}

func TestAWorkersDeliveryBeforeItsAcknowledgementArrivesIsTimedFromTheCommitAck(t *testing.T) {
	// In a worker the acknowledgement comes through a pipe after the
	// producer saw it: an event may be read first, and must be timed from
	// the acknowledgement all the same, not counted as seen before it.
	c := NewClients(SSE{}, NewSent(3), 3)
	c.DeferUnacked, c.MeasureTo = true, 3
	ms := int64(time.Millisecond)
	if !c.deferDelivery(1, pendingDelivery{at: 5 * ms}) || !c.deferDelivery(1, pendingDelivery{at: 2 * ms}) {
		t.Fatal("a delivery without its acknowledgement was not kept")
	}
	c.Ack(1, 1*ms, 3*ms)
	if c.Latency.Count() != 2 || c.Latency.Max() != 2*time.Millisecond || c.early.Load() != 1 {
		t.Errorf("latency n=%d max %v, %d early: want the one read after the commit ack at 2ms, the one read before it as early",
			c.Latency.Count(), c.Latency.Max(), c.early.Load())
	}
	if c.FromSend.Max() != 4*time.Millisecond {
		t.Errorf("from send max %v, want 4ms", c.FromSend.Max())
	}
	if c.deferDelivery(1, pendingDelivery{at: 6 * ms}) {
		t.Error("a delivery of an acknowledged template was kept waiting")
	}
}
