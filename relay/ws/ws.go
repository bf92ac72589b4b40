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
//
// Past the handshake and the replay, a connection is served as SSE's are: by
// a pump of a few worker goroutines (pump.go), told by one epoll set when a
// client sent something, writing without blocking. An idle WebSocket stream
// therefore holds no goroutine and no buffer. Frames are read and written
// with github.com/gobwas/ws, which works on single frames of a connection
// it does not own, where a connection-owning library would need a reader
// goroutine per connection.
package ws

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// Close codes the relay sends (RFC 6455 §7.4). 1012 is the standard
// "service restart"; the 4000-range codes are pgrelay's own (§7.4.2 leaves
// them to applications). They are untyped so that they compare with any
// client library's code type.
const (
	// CloseShutdown: the relay is shutting down; reconnect (to any relay)
	// with last_event_id.
	CloseShutdown = 1012
	// CloseSlowConsumer: the client fell further behind than the relay's
	// queue allows; reconnect with last_event_id to get what it missed.
	CloseSlowConsumer = 4000
	// CloseUnauthorized: the token the stream was opened with has expired;
	// reconnect with a fresh token and last_event_id.
	CloseUnauthorized = 4401
	// CloseSubscriberGone: the subscriber was deleted from the database; do
	// not reconnect with the same token.
	CloseSubscriberGone = 4403
	// CloseInternalError: the relay failed; reconnect with last_event_id.
	CloseInternalError = 1011
	// CloseProtocolError: the client broke the WebSocket protocol.
	CloseProtocolError = 1002
	// CloseMessageTooBig: the client sent a message over 4 KiB.
	CloseMessageTooBig = 1009
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

// closes are the close frames that tell a client why its stream ended;
// an end not listed is the relay's failure (1011), except the client's own
// leaving and unanswered pings, which get no close frame.
var closes = map[stream.End]struct {
	code   uint16
	reason string
}{
	stream.EndShutdown:       {CloseShutdown, ReasonShutdown},
	stream.EndSlowConsumer:   {CloseSlowConsumer, ReasonSlowConsumer},
	stream.EndSubscriberGone: {CloseSubscriberGone, ReasonSubscriberGone},
	stream.EndTokenExpired:   {CloseUnauthorized, ReasonTokenExpired},
	stream.EndError:          {CloseInternalError, reasonInternal},
}

// maxClientMessage bounds what a client may send: the relay expects no
// messages, and reads only so that pings, pongs and close frames are handled.
const maxClientMessage = 4 << 10

// errNotWebSocket answers a plain GET on the WebSocket endpoint.
var errNotWebSocket = errors.New("this endpoint speaks WebSocket: send an Upgrade: websocket request (use GET /events for Server-Sent Events)")

// errNotServing answers handshakes while no pump runs (before Run, or once
// it has stopped).
var errNotServing = errors.New("not serving WebSocket streams now (shutting down?); retry shortly")

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
	// Heartbeat is the interval of keep-alive pings.
	Heartbeat time.Duration
	// OriginPatterns are the browser origins allowed besides the relay's own:
	// scheme://host[:port] or host patterns as in --cors-origins ("*"
	// allows any origin).
	OriginPatterns []string

	// open counts upgraded connections, so shutdown can wait for their
	// close handshakes.
	open    stream.Drain
	mu      sync.Mutex
	pump    *pump
	writers sync.Pool // *bufio.Writer, for replays
}

// Run serves the live part of every stream from a few goroutines until ctx
// is done, then closes every stream with 1012 and returns once their close
// handshakes are over (or timed out). Streams are served only while Run
// runs.
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
		return fmt.Errorf("start websocket pump: %w", err)
	}
	h.mu.Lock()
	h.pump = p
	h.mu.Unlock()
	p.run(ctx, func() {
		h.mu.Lock()
		h.pump = nil
		h.mu.Unlock()
	})
	return nil
}

func (h *Handler) livePump() *pump {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pump
}

// check refuses a request that is not a WebSocket handshake, or that
// arrives while no pump serves streams.
func (h *Handler) check(r *http.Request) error {
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		return &stream.Refusal{Status: http.StatusUpgradeRequired, Header: http.Header{"Upgrade": {"websocket"}}, Err: errNotWebSocket}
	}
	if h.livePump() == nil {
		return &stream.Refusal{Status: http.StatusServiceUnavailable, Err: errNotServing}
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := h.Transport
	t.Check = h.check
	// Opened before the upgrade so that every refusal is still an HTTP
	// answer, and so live delivery starts from the moment of the handshake.
	adm, ok := h.Gate.Admit(w, r, t)
	if !ok {
		return
	}
	c, err := h.upgrade(w, r)
	if err != nil {
		// upgrade has answered (403 for a foreign origin, 400 or 426 for a
		// bad handshake).
		adm.Refuse("websocket handshake failed", err)
		return
	}
	c.adm = adm
	c.untrack = h.track()
	h.serve(r.Context(), c)
}

// serve writes the replay on the request's goroutine, then hands the
// connection to the pump, which also closes it if the replay ended the
// stream.
func (h *Handler) serve(ctx context.Context, c *conn) {
	bw := h.writer(c.nc)
	rs := &replaySink{conn: c.nc, bw: bw, timeout: h.WriteTimeout}
	err := c.adm.Classify(c.adm.Replay(ctx, rs))
	if err != nil && !rs.failed {
		// A replay the hub ended stops between two frames: they go out,
		// and the close frame after them.
		_ = rs.flush()
	}
	h.putWriter(bw)
	if rs.failed {
		// The stream may stop inside a frame: a close frame after it
		// would be garbage to the client, who sees the connection drop.
		closeConn(c, err)
		return
	}
	if p := h.livePump(); p != nil && p.add(c, err) {
		return
	}
	// The pump stopped while the replay ran: tell the client, without
	// waiting for its answer.
	if err == nil {
		err = hub.ErrShutdown
	}
	if cl, ok := closes[stream.Ending(err)]; ok {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.nc.Write(closeFrame(cl.code, cl.reason))
	}
	closeConn(c, err)
}

// closeConn ends a stream that the pump does not serve.
func closeConn(c *conn, err error) {
	_ = c.nc.Close()
	c.adm.End(err)
	c.untrack()
}

// upgrade checks the handshake as RFC 6455 §4.2 asks, and the origin, and
// answers it: on success it takes the connection over from net/http and
// returns it; otherwise it has answered with the reason.
func (h *Handler) upgrade(w http.ResponseWriter, r *http.Request) (*conn, error) {
	nc, early, err := Upgrade(w, r, h.OriginPatterns, h.writeTimeout())
	if err != nil {
		return nil, err
	}
	c := &conn{nc: nc, early: early}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c, nil
}

// Upgrade answers r's WebSocket opening handshake for a transport that
// speaks its own protocol over WebSocket frames (GraphQL), with the checks
// GET /ws makes: the handshake as RFC 6455 §4.2 asks, and the origin
// against origins (as in --cors-origins). Headers already set on w (a
// Sec-WebSocket-Protocol) go out with the 101 answer. On success it takes
// the connection over from net/http and returns it, with what the client
// sent behind its handshake that net/http had already read; otherwise it
// has answered r with the reason.
func Upgrade(w http.ResponseWriter, r *http.Request, origins []string, writeTimeout time.Duration) (net.Conn, []byte, error) {
	if status, err := checkHandshake(w, r); err != nil {
		http.Error(w, err.Error(), status)
		return nil, nil, err
	}
	if !slices.Contains(origins, "*") {
		if err := checkOrigin(r, origins); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return nil, nil, err
		}
	}
	header := w.Header().Clone() // what middleware set, e.g. Vary
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot be taken over; RFC 8441 WebSockets are not served.
		http.Error(w, http.StatusText(http.StatusNotImplemented), http.StatusNotImplemented)
		return nil, nil, fmt.Errorf("take over the connection: %w", err)
	}
	// The server's deadlines were for reading the request.
	_ = nc.SetDeadline(time.Time{})
	// A client may send frames right behind its handshake; net/http may
	// have read them already.
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		early = append([]byte(nil), b...)
	}
	header.Set("Upgrade", "websocket")
	header.Set("Connection", "Upgrade")
	header.Set("Sec-WebSocket-Accept", acceptKey(r.Header.Get("Sec-WebSocket-Key")))
	_ = nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	bw := brw.Writer
	_, _ = bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	_ = header.Write(bw)
	_, _ = bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("write handshake response: %w", err)
	}
	_ = nc.SetWriteDeadline(time.Time{})
	return nc, early, nil
}

func (h *Handler) writeTimeout() time.Duration {
	if h.WriteTimeout > 0 {
		return h.WriteTimeout
	}
	return 10 * time.Second
}

// checkHandshake says what keeps r from being a WebSocket opening handshake
// (RFC 6455 §4.2.1), and the status to answer it with.
func checkHandshake(w http.ResponseWriter, r *http.Request) (int, error) {
	switch {
	case r.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, fmt.Errorf("a WebSocket handshake is a GET request, not %s", r.Method)
	case !r.ProtoAtLeast(1, 1):
		return http.StatusUpgradeRequired, fmt.Errorf("a WebSocket handshake needs HTTP/1.1 or later, not %s", r.Proto)
	case !headerHasToken(r.Header, "Connection", "Upgrade"):
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return http.StatusUpgradeRequired, errors.New("the Connection header of a WebSocket handshake must name Upgrade")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		w.Header().Set("Sec-WebSocket-Version", "13")
		return http.StatusBadRequest, errors.New("this relay speaks WebSocket version 13 only (Sec-WebSocket-Version)")
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return http.StatusBadRequest, fmt.Errorf("a WebSocket handshake carries one Sec-WebSocket-Key header, not %d", len(keys))
	}
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0])); err != nil || len(raw) != 16 {
		return http.StatusBadRequest, errors.New("Sec-WebSocket-Key must be 16 bytes in base64")
	}
	return 0, nil
}

// checkOrigin refuses a handshake from a foreign page: browsers apply no
// CORS to WebSocket, so this is what keeps a page elsewhere from opening
// streams in its visitors' names. A handshake without Origin (not from a
// browser) and one from the relay's own host pass, and so does an origin
// that one of patterns matches: a host pattern, or a scheme://host one when
// it contains "://" (path.Match syntax, in any case).
func checkOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return fmt.Errorf("the Origin header %q is not a URL with a host", origin)
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	for _, pattern := range patterns {
		subject := u.Host
		if strings.Contains(pattern, "://") {
			subject = u.Scheme + "://" + u.Host
		}
		ok, err := path.Match(strings.ToLower(pattern), strings.ToLower(subject))
		if err != nil {
			return fmt.Errorf("origin pattern %q in --cors-origins: %w", pattern, err)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("pages from %s may not open streams on this relay (see --cors-origins)", u.Host)
}

// acceptKey is the Sec-WebSocket-Accept answer to key (RFC 6455 §4.2.2).
func acceptKey(key string) string {
	s := sha1.Sum([]byte(strings.TrimSpace(key) + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(s[:])
}

// track counts one upgraded connection until the returned func is called.
func (h *Handler) track() (untrack func()) {
	h.open.Add()
	return h.open.Done
}

// Wait blocks until every upgraded connection has finished its close
// handshake, or ctx is done.
func (h *Handler) Wait(ctx context.Context) error {
	return h.open.Wait(ctx, "websocket streams")
}

func (h *Handler) writer(w io.Writer) *bufio.Writer {
	if bw, ok := h.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 16<<10)
}

func (h *Handler) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	h.writers.Put(bw)
}

// resetMessage is {"type":"reset","id":"<at>","data":{"reason":"…"}}. It
// has no "topic" key, so it cannot be mistaken for an event of any topic;
// its id is where the client's stream now continues.
func resetMessage(at eventlog.ID) []byte {
	return []byte(`{"type":"reset","id":"` + at.String() +
		`","data":{"reason":"events after your last id are no longer retained; reload"}}`)
}

// replaySink writes a replay to the taken-over connection, buffered, each
// write bounded by the write timeout.
type replaySink struct {
	conn    net.Conn
	bw      *bufio.Writer
	timeout time.Duration
	// failed is set once a write has failed: what reached the client may
	// end inside a frame.
	failed bool
}

func (s *replaySink) write(b []byte) error {
	if s.timeout > 0 {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	var hdr [maxDataHeader]byte
	_, err := s.bw.Write(textHeader(hdr[:0], len(b)))
	if err == nil {
		_, err = s.bw.Write(b)
	}
	if err != nil {
		s.failed = true
		return writeFailed(err)
	}
	return nil
}

// writeFailed describes a failed write to the client: it went away, unless
// the write timed out, which Classify makes a slow consumer.
func writeFailed(err error) error {
	return fmt.Errorf("write to client: %w (%w)", stream.ErrClientGone, err)
}

func (s *replaySink) flush() error {
	err := s.bw.Flush()
	if err == nil && s.timeout > 0 {
		// The pump writes without waiting, and would see a stale deadline.
		err = s.conn.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		s.failed = true
		return writeFailed(err)
	}
	return nil
}

func (s *replaySink) Event(m *hub.Message) error { return s.write(m.WS()) }

func (s *replaySink) Reset(at eventlog.ID) error { return s.write(resetMessage(at)) }

// Heartbeat is not called during a replay; the pump pings.
func (s *replaySink) Heartbeat() error { return nil }

func (s *replaySink) Flush() error { return s.flush() }

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
