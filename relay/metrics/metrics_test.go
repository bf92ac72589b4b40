package metrics_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/metrics"
)

func get(t *testing.T, h http.Handler) string {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", w.Code, w.Body)
	}
	return w.Body.String()
}

func TestEachTransportGetsItsOwnSeries(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Sources{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ws := m.Transport("ws")
	ws.Connected(1)
	ws.Connected(1)
	ws.Connected(-1)
	ws.Delivered(hub.NewMessage(eventlog.Event{CreatedAt: time.Now().Add(-20 * time.Millisecond)}), true)
	ws.Delivered(hub.NewMessage(eventlog.Event{CreatedAt: time.Now().Add(-time.Hour)}), false)
	body := get(t, m.Handler())
	for _, want := range []string{
		`pgrelay_connected_subscribers{transport="ws"} 1`,
		`pgrelay_connected_subscribers{transport="sse"} 0`,
		`pgrelay_deliveries_total{mode="live",transport="ws"} 1`,
		`pgrelay_deliveries_total{mode="replay",transport="ws"} 1`,
		`pgrelay_delivery_latency_seconds_bucket{transport="ws",le="0.01"} 0`,
		`pgrelay_delivery_latency_seconds_bucket{transport="ws",le="0.025"} 1`,
		`pgrelay_delivery_latency_seconds_count{transport="ws"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s\n%s", want, body)
		}
	}
}

func TestASlowDatabaseDoesNotFailTheScrape(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Sources{
		EventsReceived: func() uint64 { return 7 },
		NotificationQueueUsage: func(ctx context.Context) (float64, error) {
			<-ctx.Done() // a database that does not answer
			return 0, errors.New("timed out")
		},
		QueryTimeout: 20 * time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	start := time.Now()
	body := get(t, m.Handler())
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("scrape took %s despite a 20ms query timeout", d)
	}
	if !strings.Contains(body, "pgrelay_events_received_total 7") {
		t.Errorf("other metrics missing when the queue usage query fails:\n%s", body)
	}
	if strings.Contains(body, "pgrelay_notification_queue_usage_ratio ") {
		t.Errorf("queue usage reported although the query failed")
	}
}

func TestFiftyScrapesInARowQueryTheDatabaseAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	var usage, failing atomic.Int64
	m := metrics.New(metrics.Sources{
		NotificationQueueUsage: func(context.Context) (float64, error) { return float64(usage.Add(1)), nil },
		HorizonHeld: func(context.Context) (float64, error) {
			failing.Add(1)
			return 0, errors.New("the database is down")
		},
		QueryInterval: time.Hour,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h := m.Handler()

	var wg sync.WaitGroup
	for range 25 {
		wg.Go(func() { get(t, h) })
	}
	wg.Wait()
	for range 25 {
		body := get(t, h)
		if !strings.Contains(body, "pgrelay_notification_queue_usage_ratio 1\n") {
			t.Fatalf("the cached value is not served:\n%s", body)
		}
	}
	if n := usage.Load(); n != 1 {
		t.Errorf("50 scrapes, 25 of them at once, ran the queue usage query %d times, want 1", n)
	}
	if n := failing.Load(); n != 1 {
		t.Errorf("50 scrapes ran a failing query %d times, want 1: a failure is kept for the interval too", n)
	}
}

func TestADatabaseGaugeIsQueriedAgainOnceItsIntervalHasPassed(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	m := metrics.New(metrics.Sources{
		NotificationQueueUsage: func(context.Context) (float64, error) { return float64(calls.Add(1)), nil },
		QueryInterval:          20 * time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h := m.Handler()
	// Taken before the first read: the second may come no sooner than the
	// interval after it.
	start := time.Now()
	get(t, h)
	deadline := start.Add(5 * time.Second)
	for !strings.Contains(get(t, h), "pgrelay_notification_queue_usage_ratio 2\n") {
		if time.Now().After(deadline) {
			t.Fatalf("the value was never read again (%d queries)", calls.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("read again after %s, before its interval of 20ms", d)
	}
}

func TestFanoutTimeIsCountedFromTheHubNotFromTheInsert(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Sources{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sse := m.Transport("sse")
	// Committed long ago, taken by the hub 3 ms ago: the database's delay
	// is not the relay's.
	live := hub.NewMessage(eventlog.Event{CreatedAt: time.Now().Add(-time.Minute)})
	live.Published = time.Now().Add(-3 * time.Millisecond)
	sse.Delivered(live, true)
	// A replayed event never went through the hub's fan-out.
	sse.Delivered(hub.NewMessage(eventlog.Event{CreatedAt: time.Now().Add(-time.Minute)}), false)
	// A live message without a hub time (built outside the hub) is not
	// timed.
	sse.Delivered(hub.NewMessage(eventlog.Event{CreatedAt: time.Now()}), true)
	body := get(t, m.Handler())
	for _, want := range []string{
		`pgrelay_fanout_seconds_bucket{transport="sse",le="0.002"} 0`,
		`pgrelay_fanout_seconds_bucket{transport="sse",le="0.004"} 1`,
		`pgrelay_fanout_seconds_count{transport="sse"} 1`,
		`pgrelay_delivery_latency_seconds_bucket{transport="sse",le="10"} 1`,
		`pgrelay_delivery_latency_seconds_count{transport="sse"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s\n%s", want, body)
		}
	}
}
