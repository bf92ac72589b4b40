package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofHandler serves Go's profiles under /debug/pprof/. Registered on its
// own mux, never on the public router: profiles reveal internals.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// servePprof serves profiles on addr until ctx is done (--pprof-addr).
func servePprof(ctx context.Context, addr string, log *slog.Logger) error {
	// WriteTimeout is left unset: a CPU profile streams for its whole
	// duration.
	return serveAside(ctx, "Go profiles", addr, &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: 10 * time.Second}, log)
}

// serveAside runs srv on addr, a listener of its own beside the public one,
// until ctx is done.
func serveAside(ctx context.Context, what, addr string, srv *http.Server, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for %s on %s: %w", what, addr, err)
	}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info("serving "+what, "addr", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", what, err)
	}
	return nil
}
