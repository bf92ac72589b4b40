package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// scrape reads GET /metrics and parses the Prometheus text format.
func scrape(t *testing.T, baseURL string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(baseURL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// sample returns the value of the series of family name whose labels
// include labels (pairs), or -1 when there is none. Histograms yield their
// sample count.
func sample(families map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	m := metric(families, name, labels...)
	if m != nil {
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// metric returns the first series of family name whose labels include
// labels (pairs), or nil.
func metric(families map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
next:
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return m
	}
	return nil
}

func TestMetricsCountADeliveredEvent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	relaytest.Eventually(t, 10*time.Second, "relay elected sequencer, polling", func() bool {
		m := scrape(t, r.URL)
		return sample(m, "pgrelay_sequencer_leader") == 1 && sample(m, "pgrelay_sequencer_polls_total") >= 1
	})

	before := scrape(t, r.URL)
	for _, name := range []string{
		"pgrelay_events_received_total", "pgrelay_slow_consumer_disconnects_total", "pgrelay_listener_reconnects_total",
		"pgrelay_catchup_events_total", "pgrelay_filter_reloads_total", "pgrelay_notification_queue_usage_ratio",
		"pgrelay_ready", "pgrelay_subscriptions", "go_goroutines", "process_resident_memory_bytes",
		"pgrelay_sequencer_polls_total", "pgrelay_sequencer_stretched_polls_total", "pgrelay_sequencer_poll_interval_seconds",
	} {
		if sample(before, name) < 0 {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if got := sample(before, "pgrelay_connected_subscribers", "transport", "sse"); got != 0 {
		t.Errorf("connected sse subscribers before any client: %v, want 0", got)
	}
	if got := sample(before, "pgrelay_ready"); got != 1 {
		t.Errorf("pgrelay_ready = %v on a ready relay", got)
	}
	// The sequencer waits between polls no less than the shortest
	// interval (busy) and no more than the idle poll.
	if got := sample(before, "pgrelay_sequencer_poll_interval_seconds"); got < 0.002 || got > 0.1 {
		t.Errorf("pgrelay_sequencer_poll_interval_seconds = %v on the sequencer, want between --poll-interval and --idle-poll", got)
	}
	if got := sample(before, "pgrelay_notification_queue_usage_ratio"); got < 0 || got > 1 {
		t.Errorf("notification queue usage %v, want a fraction", got)
	}

	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "counted", "zowi-1", "loc-1")
	first := client.Collect(t, 1, settle)[0]

	after := scrape(t, r.URL)
	checks := []struct {
		what      string
		got, want float64
	}{
		{"events received", sample(after, "pgrelay_events_received_total") - sample(before, "pgrelay_events_received_total"), 1},
		{"live sse deliveries", sample(after, "pgrelay_deliveries_total", "transport", "sse", "mode", "live"), 1},
		{"replayed sse deliveries", sample(after, "pgrelay_deliveries_total", "transport", "sse", "mode", "replay"), 0},
		{"latency observations", sample(after, "pgrelay_delivery_latency_seconds", "transport", "sse"), 1},
		{"connected sse subscribers", sample(after, "pgrelay_connected_subscribers", "transport", "sse"), 1},
		{"subscriptions", sample(after, "pgrelay_subscriptions"), 1},
		{"filter reloads (none needed)", sample(after, "pgrelay_filter_reloads_total"), sample(before, "pgrelay_filter_reloads_total")},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	h := metric(after, "pgrelay_delivery_latency_seconds", "transport", "sse").GetHistogram()
	// The text format adds the +Inf bucket.
	if b := h.GetBucket(); len(b) < 2 || b[0].GetUpperBound() != 0.0005 || b[len(b)-2].GetUpperBound() != 10 {
		t.Errorf("latency buckets %v, want 0.5ms … 10s", b)
	}
	if s := h.GetSampleSum(); s <= 0 || s > 5 {
		t.Errorf("latency of one local delivery %vs, want a small positive number", s)
	}

	// A resume replays from the log: counted as replay, with no latency.
	client.Close()
	relaytest.Eventually(t, 5*time.Second, "closed stream uncounted", func() bool {
		return sample(scrape(t, r.URL), "pgrelay_connected_subscribers", "transport", "sse") == 0
	})
	received := sample(scrape(t, r.URL), "pgrelay_events_received_total")
	relaytest.InsertTemplate(t, db, "missed", "zowi-1", "loc-1")
	// Resume only once the relay has the event, so it comes from the log.
	relaytest.Eventually(t, settle, "relay read the missed event", func() bool {
		return sample(scrape(t, r.URL), "pgrelay_events_received_total") > received
	})
	resumed := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{LastEventID: first.ID})
	resumed.Collect(t, 1, settle)
	final := scrape(t, r.URL)
	if got := sample(final, "pgrelay_deliveries_total", "transport", "sse", "mode", "replay"); got != 1 {
		t.Errorf("replayed sse deliveries after a resume: %v, want 1", got)
	}
	if got := sample(final, "pgrelay_delivery_latency_seconds", "transport", "sse"); got != 1 {
		t.Errorf("latency observations after a replay: %v, want still 1", got)
	}

	// A change to a connected subscriber's row reloads its filter.
	db.Exec(t, `UPDATE users SET name = 'Lena B.' WHERE id = 'zolo-1'`)
	relaytest.Eventually(t, settle, "filter reload counted", func() bool {
		return sample(scrape(t, r.URL), "pgrelay_filter_reloads_total") > sample(final, "pgrelay_filter_reloads_total")
	})
}

func TestHorizonHeldShowsAnOpenWriteTransactionHoldingDeliveryBack(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	if got := sample(scrape(t, r.URL), "pgrelay_horizon_held_seconds"); got < 0 || got > 5 {
		t.Fatalf("pgrelay_horizon_held_seconds = %v with no long transaction, want a few seconds at most", got)
	}

	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // ends the held transaction
	if _, err := tx.Exec(ctx, `UPDATE orgs SET name = name WHERE id = 'org-1'`); err != nil {
		t.Fatal(err)
	}
	relaytest.Eventually(t, settle, "the gauge to show the open transaction", func() bool {
		return sample(scrape(t, r.URL), "pgrelay_horizon_held_seconds") >= 1
	})
}

func TestSmallEventsReachRelaysInsideAnnouncementsWithoutALogRead(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// No safety poll: after start-up, events can only come from the
	// sequencer's announcements (or a read they trigger).
	slow := func(c *relay.Config) { c.SafetyPoll = time.Hour }
	a := relaytest.Start(t, db.URL, slow)
	b := relaytest.Start(t, db.URL, slow)
	ca := relaytest.Subscribe(t, a.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})
	cb := relaytest.Subscribe(t, b.URL, relaytest.Token(t, "zelo-1"), relaytest.SSEOptions{})

	// A relay takes announcements at their word only from the sequencer's
	// session, which it looks up when the first one arrives: that one may
	// take the log read.
	relaytest.InsertTemplate(t, db, "first", "zowi-1", "loc-2")
	ca.Collect(t, 1, settle)
	cb.Collect(t, 1, settle)
	before := map[*relaytest.Relay]float64{}
	for _, r := range []*relaytest.Relay{a, b} {
		before[r] = sample(scrape(t, r.URL), "pgrelay_events_announced_total")
	}

	const n = 5
	for i := range n {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("small-%d", i), "zowi-1", "loc-2")
		// One at a time, so each announcement follows the relays' position.
		ca.Collect(t, 1, settle)
		cb.Collect(t, 1, settle)
	}
	for _, r := range []*relaytest.Relay{a, b} {
		if got := sample(scrape(t, r.URL), "pgrelay_events_announced_total") - before[r]; got != n {
			t.Errorf("relay %s: %v events arrived in announcements, want all %d", r.URL, got, n)
		}
	}
}
