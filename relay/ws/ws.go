// Package ws serves event streams over WebSocket (GET /ws).
//
// It shares everything but the wire with the SSE transport: the same
// authentication, the same topic and last_event_id parameters, and the same
// stream.Stream, which replays from the log and then hands over to live
// events without a gap or a duplicate. Every refusal that can be decided
// before the upgrade (authentication, parameters, unknown subscriber or
// topic) is answered as plain HTTP with a JSON body, exactly like SSE; after
// the upgrade the relay only ends a stream with a close frame whose code says
// why (see docs/transports.md).
package ws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// Close codes the relay sends. 1012 is the standard "service restart"; the
// 4000-range codes are pgrelay's own (RFC 6455 §7.4.2 leaves them to
// applications).
const (
	// CloseShutdown: the relay is shutting down; reconnect (to any relay)
	// with last_event_id.
	CloseShutdown = websocket.StatusServiceRestart
	// CloseSlowConsumer: the client fell further behind than the relay's
	// queue allows; reconnect with last_event_id to get what it missed.
	CloseSlowConsumer websocket.StatusCode = 4000
	// CloseUnauthorized: the token the stream was opened with has expired;
	// reconnect with a fresh token and last_event_id.
	CloseUnauthorized websocket.StatusCode = 4401
	// CloseSubscriberGone: the subscriber was deleted from the database; do
	// not reconnect with the same token.
	CloseSubscriberGone websocket.StatusCode = 4403
)

// Close reasons, sent with the codes above. They fit the 123 bytes a close
// frame allows.
const (
	ReasonShutdown       = "relay shutting down: reconnect with last_event_id"
	ReasonSlowConsumer   = "slow consumer: resume with last_event_id"
	ReasonSubscriberGone = "subscriber no longer exists"
	ReasonTokenExpired   = "token expired: reconnect with a fresh token and last_event_id"
	reasonInternal       = "internal error"
)

// maxClientMessage bounds what a client may send: the relay expects no
// messages, and reads only so that pings, pongs and close frames are handled.
const maxClientMessage = 4 << 10

// errNotWebSocket answers a plain GET on the WebSocket endpoint.
var errNotWebSocket = errors.New("this endpoint speaks WebSocket: send an Upgrade: websocket request (use GET /events for Server-Sent Events)")

// Handler serves GET /ws.
type Handler struct {
	// Gate admits requests, as for every transport; Transport names this
	// one to it (its Check is set by ServeHTTP: the request must be a
	// WebSocket handshake).
	Gate      *stream.Gate
	Transport stream.Transport
	Log       *slog.Logger
	// WriteTimeout bounds one write to a client, and the wait for the pong
	// that answers a keep-alive ping.
	WriteTimeout time.Duration
	// OriginPatterns are the browser origins allowed besides the relay's own:
	// scheme://host[:port] as in --cors-origins ("*" allows any origin).
	OriginPatterns []string

	// active counts upgraded connections, so shutdown can wait for their
	// close handshakes: net/http's Shutdown does not track hijacked
	// connections. (Not a WaitGroup: connections may still arrive while
	// Wait waits.)
	mu      sync.Mutex
	active  int
	drained chan struct{} // closed when active drops to zero, if someone waits
}

// handshake refuses a request that is not a WebSocket handshake.
func handshake(r *http.Request) error {
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		return &stream.Refusal{Status: http.StatusUpgradeRequired, Header: http.Header{"Upgrade": {"websocket"}}, Err: errNotWebSocket}
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := h.Transport
	t.Check = handshake
	// Opened before the upgrade so that every refusal is still an HTTP
	// answer, and so live delivery starts from the moment of the handshake.
	adm, ok := h.Gate.Admit(w, r, t)
	if !ok {
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OriginPatterns:     h.OriginPatterns,
		InsecureSkipVerify: slices.Contains(h.OriginPatterns, "*"),
	})
	if err != nil {
		// Accept has answered (403 for a foreign origin, 400 for a bad
		// handshake).
		adm.Refuse("websocket handshake failed", err)
		return
	}
	defer h.track()()
	adm.End(h.serve(r.Context(), conn, adm))
}

// closes are the close frames that tell a client why its stream ended.
var closes = map[stream.End]struct {
	code   websocket.StatusCode
	reason string
}{
	stream.EndShutdown:       {CloseShutdown, ReasonShutdown},
	stream.EndSlowConsumer:   {CloseSlowConsumer, ReasonSlowConsumer},
	stream.EndSubscriberGone: {CloseSubscriberGone, ReasonSubscriberGone},
	stream.EndTokenExpired:   {CloseUnauthorized, ReasonTokenExpired},
}

// serve runs an upgraded connection until the stream ends, closes it with
// the code that says why, and returns the error the stream ended with.
func (h *Handler) serve(ctx context.Context, conn *websocket.Conn, st *stream.Admitted) error {
	conn.SetReadLimit(maxClientMessage)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		cancel(discardMessages(ctx, conn))
	}()
	s := &sink{ctx: ctx, conn: conn, st: st.Stream, timeout: h.WriteTimeout, fail: cancel}
	defer func() {
		_ = conn.CloseNow()
		<-readDone
		s.pings.Wait()
	}()

	err := st.Run(ctx, s)
	end := stream.Ending(err)
	if c, ok := closes[end]; ok {
		_ = conn.Close(c.code, c.reason)
		return err
	}
	switch {
	case errors.Is(context.Cause(ctx), stream.ErrUnresponsive):
		return stream.ErrUnresponsive
	case ctx.Err() != nil:
		// The client closed (the library has answered its close frame) or
		// the connection broke.
		return stream.ErrClientGone
	case err != nil:
		// A failed write has already closed the connection; anything else
		// is the relay's fault.
		_ = conn.Close(websocket.StatusInternalError, reasonInternal)
	}
	return err
}

// track counts one upgraded connection until the returned func is called.
func (h *Handler) track() (untrack func()) {
	h.mu.Lock()
	h.active++
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.active--
		if h.active == 0 && h.drained != nil {
			close(h.drained)
			h.drained = nil
		}
	}
}

// Wait blocks until every upgraded connection has finished its close
// handshake, or ctx is done.
func (h *Handler) Wait(ctx context.Context) error {
	h.mu.Lock()
	if h.active == 0 {
		h.mu.Unlock()
		return nil
	}
	if h.drained == nil {
		h.drained = make(chan struct{})
	}
	drained := h.drained
	h.mu.Unlock()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for websocket streams to close: %w", ctx.Err())
	}
}

// discardMessages reads until the connection ends, dropping whatever the
// client sends: reading is what makes the library answer pings, deliver
// pongs and complete close handshakes. A message over maxClientMessage makes
// the library close with 1009 (message too big).
func discardMessages(ctx context.Context, conn *websocket.Conn) error {
	for {
		_, r, err := conn.Reader(ctx)
		if err != nil {
			return fmt.Errorf("read from client: %w", err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("read from client: %w", err)
		}
	}
}

// sink writes a stream as WebSocket text messages, one per event. Messages
// go to the socket as they are (the library copies nothing larger than its
// 4 KiB write buffer), so a stream holds no buffer of its own.
type sink struct {
	ctx     context.Context
	conn    *websocket.Conn
	st      *stream.Stream
	timeout time.Duration
	fail    context.CancelCauseFunc

	pinging atomic.Bool
	pings   sync.WaitGroup
}

// largeWrite is the size from which a write stops as soon as the hub cuts
// its stream off as a slow consumer.
const largeWrite = 64 << 10

func (s *sink) write(b []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if len(b) >= largeWrite {
		// A large message to a stalled client would otherwise stay pinned,
		// with the batch it came in, until the write timeout, long after
		// the hub gave up on the client. Small ones are not worth a
		// goroutine: they pin little.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-s.st.Done():
				if errors.Is(s.st.Err(), hub.ErrSlowConsumer) {
					cancel()
				}
			case <-stop:
			}
		}()
	}
	// On timeout the library closes the connection: a client that stops
	// reading cannot hold a write for longer than this.
	if err := s.conn.Write(ctx, websocket.MessageText, b); err != nil {
		if ended := s.st.Err(); ended != nil {
			return ended // why it was cut short
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// The write's own deadline passed first (the stream's context
			// has none): the client stopped reading, the same condition as
			// a full queue, which the stream classifies by this error.
			return fmt.Errorf("write to client: %w (%w)", os.ErrDeadlineExceeded, err)
		}
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

func (s *sink) Event(m *hub.Message) error { return s.write(m.WS()) }

// Reset sends {"type":"reset","id":"<at>","data":{"reason":"…"}}. It has no
// "topic" key, so it cannot be mistaken for an event of any topic; its id is
// where the client's stream now continues.
func (s *sink) Reset(at eventlog.ID) error {
	return s.write([]byte(`{"type":"reset","id":"` + at.String() +
		`","data":{"reason":"events after your last id are no longer retained; reload"}}`))
}

// Heartbeat sends a ping without waiting for its pong: the wait happens in
// the background so events keep flowing meanwhile. A ping still unanswered
// at the next heartbeat is not doubled; one unanswered within the write
// timeout ends the stream.
func (s *sink) Heartbeat() error {
	if !s.pinging.CompareAndSwap(false, true) {
		return nil
	}
	s.pings.Add(1)
	go func() {
		defer s.pings.Done()
		defer s.pinging.Store(false)
		ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
		defer cancel()
		if err := s.conn.Ping(ctx); err != nil && s.ctx.Err() == nil {
			s.fail(fmt.Errorf("%w: %w", stream.ErrUnresponsive, err))
		}
	}()
	return nil
}

// Flush is a no-op: every message is written to the socket whole.
func (s *sink) Flush() error { return nil }

// headerHasToken reports whether the comma-separated header key contains
// token, case-insensitively.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
