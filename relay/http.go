package relay

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/pgrelay/pgrelay/relay/api"
	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/httpjson"
	"github.com/pgrelay/pgrelay/web"
)

// routes serves the relay's endpoints: probes, metrics (unless they have
// an address of their own), the transports, and the demo page with its API.
func (s *Server) routes(verifier *auth.Verifier) chi.Router {
	r := chi.NewRouter()
	r.Use(s.corsMiddleware())
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		status := http.StatusOK
		if !s.Ready() {
			status = http.StatusServiceUnavailable
		}
		httpjson.Write(w, status, map[string]any{
			"ready": status == http.StatusOK, "listening": s.reader.Listening(),
			"caught_up": s.reader.CaughtUp(), "sequencer": s.isLeader.Load(), "relay": s.name,
			"position": s.hub.Position().String(), "forged_notifications": s.reader.Forged(),
			// Capture mode wal: this relay, as the sequencer, found the
			// replication slot invalidated; events are missing from the log.
			"capture_slot_lost": s.capture.Lost(),
		})
	})
	if s.cfg.MetricsAddr == "" {
		r.Method(http.MethodGet, "/metrics", s.metrics.Handler())
	}
	r.Method(http.MethodGet, "/events", s.sse)
	r.Method(http.MethodGet, "/ws", s.ws)
	r.Method(http.MethodGet, "/graphql", s.graphql)
	r.Mount("/api", &api.Handler{Auth: verifier, DB: s.pool, Log: s.log, ListUsers: s.cfg.InsecureDev, Write: s.cfg.WriteAPI})
	r.Handle("/*", web.Handler())
	return r
}

// ListenAndRun listens on the configured address and runs.
func (s *Server) ListenAndRun(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Run(ctx, ln)
}
