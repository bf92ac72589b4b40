// Package httpconn accounts for the HTTP connections a relay accepts that
// close before a request was read from them: the client sees its connection
// end with no answer, and net/http says nothing about it. Two causes are
// told apart: no request arrived within the server's ReadHeaderTimeout (a
// client, or a relay, too starved of CPU to send or read one in time), and
// the client closing first (a TCP health check, a client that gave up).
package httpconn

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Watch is an http.Server's ConnState hook that counts connections closed
// before their first request. The zero value is not usable: set
// ReadHeaderTimeout to the server's.
type Watch struct {
	// ReadHeaderTimeout is the server's: a connection that closed this long
	// after it was accepted without a request ran into it.
	ReadHeaderTimeout time.Duration

	mu       sync.Mutex
	accepted map[net.Conn]time.Time

	timedOut, abandoned atomic.Uint64
}

// ConnState is the hook (http.Server.ConnState).
func (w *Watch) ConnState(c net.Conn, s http.ConnState) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch s {
	case http.StateNew:
		if w.accepted == nil {
			w.accepted = map[net.Conn]time.Time{}
		}
		w.accepted[c] = time.Now()
	case http.StateClosed:
		at, ok := w.accepted[c]
		if !ok {
			return
		}
		delete(w.accepted, c)
		// A little short of the timeout: the deadline is set a moment after
		// the accept, and fires a moment before the close is seen here.
		if time.Since(at) >= w.ReadHeaderTimeout*9/10 {
			w.timedOut.Add(1)
		} else {
			w.abandoned.Add(1)
		}
	default:
		// Active (a request's first bytes were read), idle, hijacked: the
		// connection got as far as a request.
		delete(w.accepted, c)
	}
}

// TimedOut counts connections closed because no request arrived within
// ReadHeaderTimeout.
func (w *Watch) TimedOut() uint64 { return w.timedOut.Load() }

// Abandoned counts connections the client closed before sending a request.
func (w *Watch) Abandoned() uint64 { return w.abandoned.Load() }

// Run logs, at most once per every, how many connections timed out before
// their request since the last line, until ctx is done; abandoned
// connections are only counted (health checks make them routine).
func (w *Watch) Run(ctx context.Context, log *slog.Logger, every time.Duration) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var logged uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if n := w.TimedOut(); n > logged {
			log.Warn("connections closed without an answer: no request arrived within the read-header timeout (an overloaded client or relay)",
				"connections", n-logged, "timeout", w.ReadHeaderTimeout, "since", every)
			logged = n
		}
	}
}
