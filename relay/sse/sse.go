// Package sse serves event streams as Server-Sent Events (GET /events).
//
// The handler is written on net/http rather than on an SSE server library:
// every stream needs its own authenticated filter, replay from the database
// by Last-Event-ID, and a bounded queue shared with the WebSocket transport,
// which a library's in-memory broadcast streams cannot provide.
package sse

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// Handler serves GET /events.
type Handler struct {
	// Gate admits requests, as for every transport; Transport names this
	// one to it.
	Gate      *stream.Gate
	Transport stream.Transport
	Log       *slog.Logger
	// WriteTimeout bounds one write to a client that stopped reading.
	WriteTimeout time.Duration
	// Retry is the reconnect delay suggested to clients.
	Retry time.Duration
	// Heartbeat is the keep-alive interval of streams served by Run.
	Heartbeat time.Duration

	mu      sync.Mutex
	pump    *pump
	writers writerPool
}

// Run serves the live part of streams from a few goroutines until ctx is
// done, then tells every stream it holds to reconnect and returns once they
// are closed. Without Run, each stream is served on its request's goroutine.
func (h *Handler) Run(ctx context.Context) error {
	heartbeat := h.Heartbeat
	if heartbeat <= 0 {
		heartbeat = 10 * time.Second
	}
	timeout := h.WriteTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	p, err := newPump(h.Log, heartbeat, timeout)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.pump = p
	h.mu.Unlock()
	p.run(ctx)
	h.mu.Lock()
	h.pump = nil
	h.mu.Unlock()
	return nil
}

// Live reports whether Run is serving streams.
func (h *Handler) Live() bool { return h.livePump() != nil }

func (h *Handler) livePump() *pump {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pump
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	adm, ok := h.Gate.Admit(w, r, h.Transport)
	if !ok {
		return
	}
	if p := h.livePump(); p != nil && r.ProtoMajor == 1 {
		if h.serveLive(w, r, p, &liveConn{adm: adm}) {
			return
		}
	}
	h.serveOnRequest(w, r, adm)
}

// serveLive takes the connection over from net/http, writes the response
// header and the replay itself, then hands the stream to the pump. It
// returns false, having written nothing, if the connection cannot be taken
// over; the stream is then served on the request's goroutine.
func (h *Handler) serveLive(w http.ResponseWriter, r *http.Request, p *pump, c *liveConn) bool {
	header := w.Header().Clone()
	nc, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// The server's deadlines were for reading the request; a GET has no
	// body, and nothing the client sends afterwards matters.
	_ = nc.SetDeadline(time.Time{})
	c.nc = nc
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	bw := h.writers.get(nc)
	cs := &connSink{conn: nc, bw: bw, timeout: h.WriteTimeout}
	setStreamHeaders(header)
	header.Set("Connection", "close") // the body ends when the connection does
	err = cs.writeHeader(header)
	if err == nil {
		err = cs.write(h.retryFrame())
	}
	if err == nil {
		err = c.adm.Classify(c.adm.Replay(r.Context(), frameSink[*connSink]{cs}))
	}
	if err != nil {
		// A replay the hub ended (subscriber deleted, token expired) stops
		// between two events, with frames still buffered: the notice goes
		// after them, on a line of its own. After a failed write the stream
		// may stop inside a frame, and a notice would read as the rest of
		// it; the client is better served by EOF alone, which drops the
		// incomplete event.
		if n := notice(stream.Ending(err)); n != nil && !cs.failed {
			cs.timeout = min(cs.timeout, time.Second)
			if cs.write(n) == nil {
				_ = cs.flush()
			}
		}
		h.writers.put(bw)
		p.closeUnowned(c, err, false)
		return true
	}
	h.writers.put(bw)
	if !p.add(c) {
		p.closeUnowned(c, hub.ErrShutdown, true)
	}
	return true
}

// serveOnRequest streams on the request's goroutine through net/http: for
// connections that cannot be taken over (HTTP/2) or when no pump runs.
func (h *Handler) serveOnRequest(w http.ResponseWriter, r *http.Request, adm *stream.Admitted) {
	rc := http.NewResponseController(w)
	setStreamHeaders(w.Header())
	w.WriteHeader(http.StatusOK)
	rs := &responseSink{w: w, rc: rc, timeout: h.WriteTimeout}
	err := rs.write(h.retryFrame())
	if err == nil {
		err = adm.Run(r.Context(), frameSink[*responseSink]{rs})
		if n := notice(stream.Ending(err)); n != nil {
			_ = rs.write(n)
			_ = rc.Flush()
		}
	}
	adm.End(err)
}

func setStreamHeaders(hdr http.Header) {
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
}

func (h *Handler) retryFrame() []byte {
	return []byte("retry: " + strconv.Itoa(int(h.Retry/time.Millisecond)) + "\n\n")
}

// notice is the comment that tells the client why its stream ends, or nil
// when there is nobody left to tell.
func notice(e stream.End) []byte {
	switch e {
	case stream.EndShutdown:
		return []byte(": relay shutting down, reconnect\n\n")
	case stream.EndSlowConsumer:
		return []byte(": closed: slow consumer, resume with Last-Event-ID\n\n")
	case stream.EndSubscriberGone:
		return []byte(": closed: subscriber no longer exists\n\n")
	case stream.EndTokenExpired:
		return []byte(": closed: token expired, reconnect with a fresh token and Last-Event-ID\n\n")
	default:
		return nil
	}
}

var pingFrame = []byte(": ping\n\n")

func resetFrame(at eventlog.ID) []byte {
	return []byte("id: " + at.String() + "\nevent: reset\ndata: {\"reason\":\"events after your last id are no longer retained; reload\"}\n\n")
}

// frameWriter is what carries a stream's frames: the response, a
// taken-over connection, or the pump's buffer.
type frameWriter interface {
	write(b []byte) error
	flush() error
}

// frameSink turns a frameWriter into a stream.Sink. Generic rather than an
// interface field so that frameSink[*frames] is a single pointer, which the
// pump hands to Deliver for every batch without allocating.
type frameSink[W frameWriter] struct{ w W }

func (s frameSink[W]) Event(m *hub.Message) error { return s.w.write(m.SSE()) }

func (s frameSink[W]) Reset(at eventlog.ID) error { return s.w.write(resetFrame(at)) }

func (s frameSink[W]) Heartbeat() error { return s.w.write(pingFrame) }

func (s frameSink[W]) Flush() error { return s.w.flush() }

// responseSink writes through net/http's ResponseWriter.
type responseSink struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (s *responseSink) write(b []byte) error {
	if s.timeout > 0 {
		// A client that stops reading blocks the write until this deadline;
		// its queue meanwhile overflows and the hub drops it.
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	_, err := s.w.Write(b)
	return err
}

func (s *responseSink) flush() error { return s.rc.Flush() }

// connSink writes a stream straight to a taken-over connection, buffered.
type connSink struct {
	conn    net.Conn
	bw      *bufio.Writer
	timeout time.Duration
	// failed is set once a write has failed: what reached the client may
	// end inside a frame.
	failed bool
}

func (s *connSink) writeHeader(header http.Header) error {
	if err := s.write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
		return err
	}
	if err := header.Write(s.bw); err != nil {
		return err
	}
	return s.write([]byte("\r\n"))
}

func (s *connSink) write(b []byte) error {
	if s.timeout > 0 {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	_, err := s.bw.Write(b)
	s.failed = s.failed || err != nil
	return err
}

func (s *connSink) flush() error {
	err := s.bw.Flush()
	s.failed = s.failed || err != nil
	if err == nil && s.timeout > 0 {
		// The pump writes without waiting, and would see a stale deadline.
		err = s.conn.SetWriteDeadline(time.Time{})
	}
	return err
}

// writerPool recycles the buffered writers used for replays.
type writerPool struct{ pool sync.Pool }

func (wp *writerPool) get(w io.Writer) *bufio.Writer {
	if bw, ok := wp.pool.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 16<<10)
}

func (wp *writerPool) put(bw *bufio.Writer) {
	bw.Reset(nil)
	wp.pool.Put(bw)
}
