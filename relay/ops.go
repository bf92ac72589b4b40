package relay

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/cors"

	"github.com/pgrelay/pgrelay/relay/metrics"
	"github.com/pgrelay/pgrelay/relay/retention"
)

// corsMiddleware lets browsers on the configured origins read the event
// stream and the JSON endpoints. Without configured origins it adds nothing:
// only same-origin pages may read responses.
func (s *Server) corsMiddleware() func(http.Handler) http.Handler {
	if len(s.cfg.CORSOrigins) == 0 {
		// go-chi/cors treats an empty list as "any origin": never hand it one.
		return func(next http.Handler) http.Handler { return next }
	}
	return cors.Handler(cors.Options{
		AllowedOrigins: s.cfg.CORSOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodHead, http.MethodOptions},
		// EventSource sends Last-Event-ID on reconnect; fetch-based clients
		// send Authorization.
		AllowedHeaders: []string{"Authorization", "Last-Event-ID", "Cache-Control", "Content-Type"},
		ExposedHeaders: []string{"Retry-After"},
		// Tokens travel in headers or the query, never in cookies.
		AllowCredentials: false,
		MaxAge:           600,
	})
}

// newMetrics builds the relay's metrics, reading the hub's and the
// listener's counters at scrape time.
func (s *Server) newMetrics() *metrics.Metrics {
	return metrics.New(metrics.Sources{
		EventsReceived:      func() uint64 { return s.hub.Stats().Published },
		EventsAnnounced:     s.reader.EventsAnnounced,
		ForgedNotifications: s.reader.Forged,
		SlowConsumers:       func() uint64 { return s.hub.Stats().SlowConsumers },
		Subscriptions:       func() int { return s.hub.Stats().Subscriptions },
		ListenerReconnects:  s.listener.Reconnects,
		CatchupEvents:       s.reader.CatchupEvents,
		ReplayLogReads:      func() uint64 { return s.opener.ReplayLogReads() },
		ReplayRecentEvents:  func() uint64 { return s.opener.ReplayRecentEvents() },
		ReplayCacheBytes:    func() float64 { return float64(s.recent.Stats().Bytes) },
		ReplayCacheEvents:   func() float64 { return float64(s.recent.Stats().Events) },
		ReplayCacheRestarts: func() uint64 { return s.recent.Stats().Restarts },
		FilterReloads:       s.refresher.Reloads,

		FilterReloadedSubscribers: s.refresher.ReloadedSubscribers,
		Ready:                     s.Ready,
		Leader:                    s.isLeader.Load,
		SequencerPolls:            func() uint64 { return s.sequencer.Stats().Polls },
		SequencerStretchedPolls:   func() uint64 { return s.sequencer.Stats().StretchedPolls },
		SequencerPollInterval:     func() float64 { return s.sequencer.Stats().Wait.Seconds() },
		NotificationQueueUsage: func(ctx context.Context) (float64, error) {
			var usage float64
			if err := s.pool.QueryRow(ctx, "SELECT pg_notification_queue_usage()").Scan(&usage); err != nil {
				return 0, fmt.Errorf("read pg_notification_queue_usage(): %w", err)
			}
			return usage, nil
		},
		HorizonHeld: func(ctx context.Context) (float64, error) {
			var seconds float64
			err := s.pool.QueryRow(ctx, `
SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0)::float8
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_xid IS NOT NULL`).Scan(&seconds)
			if err != nil {
				return 0, fmt.Errorf("read the oldest open write transaction: %w", err)
			}
			return seconds, nil
		},
		CaptureSlotLag:     s.slotBytes("confirmed_flush_lsn"),
		CaptureRetainedWAL: s.slotBytes("restart_lsn"),
		CaptureLagSeconds:  func() float64 { return s.capture.Lag().Seconds() },
		CaptureEvents:      s.capture.Events,
		CaptureSlotLost:    s.capture.Lost,
		RequestTimeouts:    s.conns.TimedOut,
		AbandonedConns:     s.conns.Abandoned,
		OpensWorking:       s.opening.Working,
		OpensWaiting:       s.opening.Waiting,
		QueryTimeout:       time.Second,
	}, s.log)
}

// slotBytes reads how far the given position of the database's replication
// slot trails the server's WAL (0 without a slot).
func (s *Server) slotBytes(column string) func(ctx context.Context) (float64, error) {
	query := `
SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.` + column + `), 0)::float8
  FROM relay.capture c
  LEFT JOIN pg_replication_slots s ON s.slot_name = c.slot_name`
	return func(ctx context.Context) (float64, error) {
		var bytes float64
		if err := s.pool.QueryRow(ctx, query).Scan(&bytes); err != nil {
			return 0, fmt.Errorf("read the replication slot's %s: %w", column, err)
		}
		return bytes, nil
	}
}

// serveMetrics serves /metrics on --metrics-addr until ctx is done.
func (s *Server) serveMetrics(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.Handler())
	return serveAside(ctx, "metrics", s.cfg.MetricsAddr, &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       s.cfg.IdleTimeout,
	}, s.log)
}

// pruneLog is the sequencer's duty: prune the log on schedule, so exactly
// one relay prunes at a time.
func (s *Server) pruneLog(ctx context.Context) error {
	return retention.Run(ctx, s.pool, retention.Options{
		OlderThan: s.cfg.Retention,
		MaxEvents: int64(s.cfg.RetentionMaxEvents),
		Interval:  s.cfg.RetentionInterval,
		Batch:     retention.DefaultBatch,
		Pruned:    func(r retention.Result) { s.metrics.Pruned(r.Deleted) },
	}, s.log)
}
