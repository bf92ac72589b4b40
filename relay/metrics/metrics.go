// Package metrics exposes a relay's Prometheus metrics on its own registry
// (never the process-wide default one, so several relays can run in one
// process, as they do in tests).
//
// Counters the relay already keeps (the hub's, the listener's) are read at
// scrape time through Sources; what happens per connection or per delivery is
// pushed through the methods of Metrics and Transport.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgrelay/pgrelay/relay/hub"
)

// Sources are read when Prometheus scrapes. Every field is optional.
type Sources struct {
	// EventsReceived counts events the relay received (read from the log or
	// announced).
	EventsReceived func() uint64
	// EventsAnnounced counts the events that arrived inside the sequencer's
	// announcements, so the relay did not read them from the log.
	EventsAnnounced func() uint64
	// ForgedNotifications counts notifications on the events channel that
	// no relay sealed.
	ForgedNotifications func() uint64
	// SlowConsumers counts streams closed because their queue was full.
	SlowConsumers func() uint64
	// Subscriptions is the number of open subscriptions in the hub.
	Subscriptions func() int
	// ListenerReconnects counts reconnects of the LISTEN connection.
	ListenerReconnects func() uint64
	// CatchupEvents counts events read from the log to catch up after the
	// listener reconnected.
	CatchupEvents func() uint64
	// ReplayLogReads counts the queries replays made to the log, and
	// ReplayRecentEvents the events they took from the relay's window of
	// the recent log instead.
	ReplayLogReads, ReplayRecentEvents func() uint64
	// ReplayCacheBytes and ReplayCacheEvents are what that window holds.
	ReplayCacheBytes, ReplayCacheEvents func() float64
	// ReplayCacheRestarts counts the times the window started over at a
	// gap and let go of everything it held.
	ReplayCacheRestarts func() uint64
	// FilterReloads and FilterReloadedSubscribers count reloads of connected
	// subscribers' filters, and the filters reloaded.
	FilterReloads, FilterReloadedSubscribers func() uint64
	// Ready reports readiness as /readyz does.
	Ready func() bool
	// Leader reports whether this relay is the sequencer.
	Leader func() bool
	// SequencerPolls counts this relay's polls of the log as the
	// sequencer, and SequencerStretchedPolls those after which it waited
	// longer than --poll-interval because events arrived fast.
	SequencerPolls, SequencerStretchedPolls func() uint64
	// SequencerPollInterval is the sequencer's current wait between polls,
	// in seconds (0 on a relay that is not the sequencer).
	SequencerPollInterval func() float64
	// NotificationQueueUsage returns pg_notification_queue_usage(), the
	// fraction of PostgreSQL's NOTIFY queue in use. It is called with a
	// context that expires after QueryTimeout.
	NotificationQueueUsage func(ctx context.Context) (float64, error)
	// HorizonHeld returns how long, in seconds, the oldest write transaction
	// of the relay's database has been open: events committed after it began
	// wait for it to end (0 when none is open). Called like
	// NotificationQueueUsage.
	HorizonHeld func(ctx context.Context) (float64, error)
	// CaptureSlotLag and CaptureRetainedWAL return, in bytes, how far the
	// database's replication slot (capture mode wal) trails the server's
	// WAL: its confirmed position, and the oldest WAL it keeps (what a
	// stalled sequencer costs the disk). 0 without a slot. Called like
	// NotificationQueueUsage.
	CaptureSlotLag, CaptureRetainedWAL func(ctx context.Context) (float64, error)
	// CaptureLagSeconds is how long the newest transaction this relay's
	// capture appended had been committed when it reached the log.
	CaptureLagSeconds func() float64
	// CaptureEvents counts the events this relay appended from the WAL.
	CaptureEvents func() uint64
	// CaptureSlotLost reports whether this relay found the slot invalidated.
	CaptureSlotLost func() bool
	// RequestTimeouts counts connections closed because no request arrived
	// within the read-header timeout; AbandonedConns those the client
	// closed before sending one (see httpconn.Watch).
	RequestTimeouts, AbandonedConns func() uint64
	// OpensWorking and OpensWaiting count the streams opening (loading
	// their filter, starting their replay) and those waiting for their turn
	// to (see limit.Opening).
	OpensWorking, OpensWaiting func() int
	// QueryTimeout bounds the database queries above (default 1s), so a slow
	// database does not hang scrapes.
	QueryTimeout time.Duration
	// QueryInterval is how long a value read by the queries above is served
	// before they run again (default 5s): whoever can reach /metrics, and
	// however often, the database sees at most one query per interval.
	QueryInterval time.Duration
}

// Metrics holds one relay's collectors.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger

	connected  *prometheus.GaugeVec
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	fanout     *prometheus.HistogramVec
	pruned     prometheus.Counter
	refusals   *prometheus.CounterVec
}

// LatencyBuckets are the commit→send latency histogram's upper bounds, in
// seconds: from 0.5 ms (a relay on the database host) to 10 s (a relay that
// fell behind).
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// FanoutBuckets are the hub→write histogram's upper bounds, in seconds:
// from 0.1 ms (the first recipients of an event) to 2.5 s (a relay whose
// writers fell far behind), finest between 1 and 10 ms, where the last
// recipients of a broadcast to thousands lie.
var FanoutBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// New returns metrics registered on a fresh registry, reading src at scrape
// time; log receives scrape errors.
func New(src Sources, log *slog.Logger) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		log: log,
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgrelay_connected_subscribers",
			Help: "Open event streams, by transport.",
		}, []string{"transport"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrelay_deliveries_total",
			Help: "Events written to clients, by transport and mode (live, or replay from the log on resume).",
		}, []string{"transport", "mode"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgrelay_delivery_latency_seconds",
			Help:    "Time from an event's insert (created_at) to its write to a client, for live deliveries, by transport.",
			Buckets: LatencyBuckets,
		}, []string{"transport"}),
		fanout: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgrelay_fanout_seconds",
			Help:    "Time from an event reaching the hub to its write to a client, for live deliveries, by transport: the relay's own share of pgrelay_delivery_latency_seconds.",
			Buckets: FanoutBuckets,
		}, []string{"transport"}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgrelay_pruned_events_total",
			Help: "Events this relay pruned from the log (as the sequencer).",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgrelay_stream_refusals_total",
			Help: "Streams refused, by transport and reason (unauthorized, forbidden, bad_request, relay_full, subscriber_full, busy, shutting_down, client_gone, transport, unavailable).",
		}, []string{"transport", "reason"}),
	}
	// The SSE series exist from the start, so dashboards and alerts see a
	// zero rather than nothing.
	m.Transport("sse")
	m.reg.MustRegister(m.connected, m.deliveries, m.latency, m.fanout, m.pruned, m.refusals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.registerSources(src)
	return m
}

func (m *Metrics) registerSources(src Sources) {
	counter := func(name, help string, f func() uint64) {
		if f != nil {
			m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
				func() float64 { return float64(f()) }))
		}
	}
	gauge := func(name, help string, f func() float64) {
		if f != nil {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
		}
	}
	counter("pgrelay_catchup_events_total", "Events read from the log to catch up after the listener reconnected.", src.CatchupEvents)
	counter("pgrelay_replay_log_reads_total", "Queries resuming streams made to the event log for their replay (one per batch); replays of what the window of the recent log holds make none.", src.ReplayLogReads)
	counter("pgrelay_replay_cache_events_total", "Events resuming streams took from the window of the recent log instead of reading the log: those their filters' keys select, and reset markers.", src.ReplayRecentEvents)
	gauge("pgrelay_replay_cache_bytes", "Bytes the window of the recent log holds (rows, audiences and encodings; at most --replay-cache-bytes).", src.ReplayCacheBytes)
	gauge("pgrelay_replay_cache_events", "Events the window of the recent log holds.", src.ReplayCacheEvents)
	counter("pgrelay_replay_cache_restarts_total", "Times the window of the recent log started over at a gap, letting go of every event it held (after a reset of the relay's position, say); resumes from before the restart read the log.", src.ReplayCacheRestarts)
	counter("pgrelay_filter_reloads_total", "Reloads of connected subscribers' filters.", src.FilterReloads)
	counter("pgrelay_filter_reloaded_subscribers_total", "Subscriber filters reloaded.", src.FilterReloadedSubscribers)
	counter("pgrelay_events_received_total", "Events this relay received, read from the log or announced.", src.EventsReceived)
	if src.EventsAnnounced != nil {
		counter("pgrelay_events_announced_total", "Events that arrived inside the sequencer's notifications, with no log read.", src.EventsAnnounced)
	}
	if src.ForgedNotifications != nil {
		counter("pgrelay_notifications_forged_total", "Notifications on the events channel that no relay sealed, ignored: any value above 0 means some database session other than a relay's sends on it.", src.ForgedNotifications)
	}
	counter("pgrelay_slow_consumer_disconnects_total", "Streams closed because the client fell too far behind (its queue was full).", src.SlowConsumers)
	counter("pgrelay_listener_reconnects_total", "Reconnects of the relay's LISTEN connection.", src.ListenerReconnects)
	if src.Subscriptions != nil {
		gauge("pgrelay_subscriptions", "Open subscriptions in the hub (every transport).", func() float64 { return float64(src.Subscriptions()) })
	}
	if src.Ready != nil {
		gauge("pgrelay_ready", "1 while the relay is ready (listening and caught up), as /readyz.", func() float64 { return boolFloat(src.Ready()) })
	}
	if src.Leader != nil {
		gauge("pgrelay_sequencer_leader", "1 while this relay is the sequencer (announces events and prunes the log).", func() float64 { return boolFloat(src.Leader()) })
	}
	counter("pgrelay_sequencer_polls_total", "Polls of the log by this relay as the sequencer.", src.SequencerPolls)
	counter("pgrelay_sequencer_stretched_polls_total", "Sequencer polls after which the wait was longer than --poll-interval because events arrived at --poll-stretch-rate or faster.", src.SequencerStretchedPolls)
	if src.SequencerPollInterval != nil {
		gauge("pgrelay_sequencer_poll_interval_seconds", "The sequencer's wait after its latest poll: --poll-interval up to --poll-interval-max while events flow, --idle-poll while idle, 0 on a relay that is not the sequencer.", src.SequencerPollInterval)
	}
	if src.RequestTimeouts != nil {
		counter("pgrelay_http_request_timeouts_total", "Connections closed without an answer because no request arrived within the read-header timeout (10s): an overloaded client or relay.", src.RequestTimeouts)
	}
	if src.AbandonedConns != nil {
		counter("pgrelay_http_abandoned_connections_total", "Connections the client closed before sending a request (TCP health checks, clients that gave up).", src.AbandonedConns)
	}
	if src.OpensWorking != nil {
		gauge("pgrelay_stream_opens_working", "Streams loading their filter or starting their replay now (at most --open-concurrency).", func() float64 { return float64(src.OpensWorking()) })
	}
	if src.OpensWaiting != nil {
		gauge("pgrelay_stream_opens_waiting", "Streams waiting for their turn to open (with those working, at most --max-opening; more get 503).", func() float64 { return float64(src.OpensWaiting()) })
	}
	if src.CaptureLagSeconds != nil {
		gauge("pgrelay_capture_lag_seconds", "Capture mode wal: how long the newest transaction this relay appended had been committed when its events reached the log (0 once caught up).", src.CaptureLagSeconds)
	}
	if src.CaptureSlotLost != nil {
		gauge("pgrelay_capture_slot_lost", "Capture mode wal: 1 when this relay found the replication slot invalidated (events are missing; see docs/operations.md).", func() float64 { return boolFloat(src.CaptureSlotLost()) })
	}
	if src.CaptureEvents != nil {
		counter("pgrelay_capture_events_total", "Capture mode wal: events this relay appended to the log from the replication slot.", src.CaptureEvents)
	}
	timeout := src.QueryTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	interval := src.QueryInterval
	if interval <= 0 {
		interval = DefaultQueryInterval
	}
	if src.NotificationQueueUsage != nil {
		m.reg.MustRegister(&queryGauge{query: src.NotificationQueueUsage, timeout: timeout, interval: interval, desc: prometheus.NewDesc(
			"pgrelay_notification_queue_usage_ratio",
			"pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use (NOTIFY fails when it is full).",
			nil, nil)})
	}
	if src.CaptureSlotLag != nil {
		m.reg.MustRegister(&queryGauge{query: src.CaptureSlotLag, timeout: timeout, interval: interval, desc: prometheus.NewDesc(
			"pgrelay_capture_slot_lag_bytes",
			"Capture mode wal: bytes of WAL between the server's current position and what the replication slot has confirmed (0 without a slot).",
			nil, nil)})
	}
	if src.CaptureRetainedWAL != nil {
		m.reg.MustRegister(&queryGauge{query: src.CaptureRetainedWAL, timeout: timeout, interval: interval, desc: prometheus.NewDesc(
			"pgrelay_capture_retained_wal_bytes",
			"Capture mode wal: bytes of WAL the server keeps for the replication slot (bounded by max_slot_wal_keep_size).",
			nil, nil)})
	}
	if src.HorizonHeld != nil {
		m.reg.MustRegister(&queryGauge{query: src.HorizonHeld, timeout: timeout, interval: interval, desc: prometheus.NewDesc(
			"pgrelay_horizon_held_seconds",
			"Age of the oldest open write transaction in the relay's database: events committed since it began are delivered only when it ends.",
			nil, nil)})
	}
}

// DefaultQueryInterval is how long a database gauge's value is reused
// between queries, unless Sources.QueryInterval says otherwise.
const DefaultQueryInterval = 5 * time.Second

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// queryGauge is a gauge read from the database at scrape time, at most once
// per interval: a scrape is an unauthenticated request on the public port
// unless --metrics-addr moves it, and must not become a way to load the
// database. Scrapes that arrive while a query runs wait for it rather than
// start their own.
type queryGauge struct {
	query    func(ctx context.Context) (float64, error)
	timeout  time.Duration
	interval time.Duration
	desc     *prometheus.Desc

	mu     sync.Mutex
	readAt time.Time
	value  float64
	// err is kept as well as a value: a database that fails the query is
	// not asked again on every scrape either.
	err error
}

func (q *queryGauge) Describe(ch chan<- *prometheus.Desc) { ch <- q.desc }

func (q *queryGauge) Collect(ch chan<- prometheus.Metric) {
	v, err := q.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(q.desc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, v)
}

func (q *queryGauge) read() (float64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.readAt.IsZero() && time.Since(q.readAt) < q.interval {
		return q.value, q.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.timeout)
	defer cancel()
	q.value, q.err = q.query(ctx)
	q.readAt = time.Now()
	return q.value, q.err
}

// Handler serves the metrics in Prometheus text format. A metric that cannot
// be collected (the database is slow) is left out and logged; the rest is
// still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      errorLog{m.log},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg,
	})
}

// Registry returns the registry, for callers that add their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

type errorLog struct{ log *slog.Logger }

func (e errorLog) Println(v ...any) {
	if e.log != nil {
		e.log.Warn("collect metrics", "err", fmt.Sprint(v...))
	}
}

// Pruned counts n events pruned from the log.
func (m *Metrics) Pruned(n int64) { m.pruned.Add(float64(n)) }

// Transport returns the hooks of one transport ("sse", "ws"): pass its
// Connected to the transport's connection hook and the Transport itself as
// the streams' stream.Observer.
func (m *Metrics) Transport(name string) *Transport {
	return &Transport{
		connected: m.connected.WithLabelValues(name),
		live:      m.deliveries.WithLabelValues(name, "live"),
		replay:    m.deliveries.WithLabelValues(name, "replay"),
		latency:   m.latency.WithLabelValues(name),
		fanout:    m.fanout.WithLabelValues(name),
		refusals:  m.refusals.MustCurryWith(prometheus.Labels{"transport": name}),
		now:       time.Now,
	}
}

// Transport records one transport's connections and deliveries.
type Transport struct {
	connected    prometheus.Gauge
	live, replay prometheus.Counter
	latency      prometheus.Observer
	fanout       prometheus.Observer
	refusals     *prometheus.CounterVec
	now          func() time.Time
}

// Refused counts one stream refused for reason (stream.RefusalReason).
func (t *Transport) Refused(reason string) { t.refusals.WithLabelValues(reason).Inc() }

// Connected adds delta (+1 on open, -1 on close) to the transport's open
// streams.
func (t *Transport) Connected(delta int) { t.connected.Add(float64(delta)) }

// Delivered counts one event written to a client (stream.Observer). Latency
// and fan-out time are observed for live events only: a replayed event is as old as the
// client's absence, which says nothing about the relay.
func (t *Transport) Delivered(m *hub.Message, live bool) {
	if !live {
		t.replay.Inc()
		return
	}
	t.live.Inc()
	now := t.now()
	if !m.CreatedAt.IsZero() {
		t.latency.Observe(max(now.Sub(m.CreatedAt), 0).Seconds())
	}
	if !m.Published.IsZero() {
		t.fanout.Observe(max(now.Sub(m.Published), 0).Seconds())
	}
}
