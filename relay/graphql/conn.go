package graphql

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gws "github.com/gobwas/ws"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/stream"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// readBuffer is each connection's read buffer: enough for any frame header
// and small messages in one read.
const readBuffer = 1 << 10

// closeWait bounds a close handshake: how long the relay waits for the
// client's close frame after sending its own.
const closeWait = 5 * time.Second

// maxID bounds an operation id.
const maxID = 128

var errShutdown = hub.ErrShutdown

// closing is a close frame to send.
type closing struct {
	code   uint16
	reason string
}

func closeFor(code uint16, reason string) closing {
	if len(reason) > 123 { // what a close frame holds
		reason = reason[:120] + "..."
	}
	return closing{code, reason}
}

// conn is one GraphQL connection.
type conn struct {
	h      *Handler
	r      *http.Request
	nc     net.Conn
	br     *bufio.Reader
	legacy bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// wmu serialises whole frames from the goroutines that write. bw is
	// taken from the handler's pool by the first write after a flush and
	// given back by the flush, so an idle connection holds no write buffer.
	wmu     sync.Mutex
	bw      *bufio.Writer
	sent    bool // a close frame went out
	broken  bool // a write failed: the stream may stop inside a frame
	closing atomic.Bool

	mu       sync.Mutex
	inited   bool // connection_init received
	acked    bool
	id       auth.Identity
	ops      map[string]*op
	endErr   error
	timers   map[*time.Timer]struct{}
	finished bool

	expired sync.Once
}

// op is one running subscription.
type op struct{ cancel context.CancelFunc }

func newConn(h *Handler, r *http.Request, nc net.Conn, early []byte, legacy bool) *conn {
	var in io.Reader = nc
	if len(early) > 0 {
		in = io.MultiReader(bytes.NewReader(early), nc)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	return &conn{
		h: h, r: r, nc: nc, legacy: legacy, ctx: ctx, cancel: cancel,
		br:  bufio.NewReaderSize(in, readBuffer),
		ops: map[string]*op{}, timers: map[*time.Timer]struct{}{},
	}
}

// serve reads the client's messages until the connection ends, then waits
// for every subscription to end.
func (c *conn) serve() {
	c.after(c.h.initTimeout(), func() {
		c.mu.Lock()
		inited := c.inited
		c.mu.Unlock()
		if !inited {
			c.end(closeFor(CloseInitTimeout, "Connection initialisation timeout"), stream.ErrClientGone)
		}
	})
	c.after(c.h.heartbeat(), c.keepAlive)
	err := c.read()
	if err != nil {
		c.mu.Lock()
		if c.endErr == nil {
			c.endErr = err
		}
		c.mu.Unlock()
	}
	c.finish()
}

// finish closes the socket and waits for the subscriptions' goroutines.
func (c *conn) finish() {
	c.cancel()
	_ = c.nc.Close()
	c.mu.Lock()
	c.finished = true
	for t := range c.timers {
		t.Stop()
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.wmu.Lock()
	if c.bw != nil {
		c.bw.Reset(nil)
		c.bw = nil // not given back: it may hold part of a frame
	}
	c.wmu.Unlock()
}

// after runs fn after d, unless the connection has ended by then.
func (c *conn) after(d time.Duration, fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		c.mu.Lock()
		delete(c.timers, t)
		c.mu.Unlock()
		fn()
	})
	c.timers[t] = struct{}{}
}

// keepAlive pings the client every heartbeat (its pong, like anything it
// sends, renews the read deadline) and, in the legacy protocol once
// acknowledged, sends ka messages, which its clients watch for. It runs on
// a timer, so that an idle connection holds no goroutine for it.
func (c *conn) keepAlive() {
	if c.ctx.Err() != nil {
		return
	}
	if err := c.writeRaw(pingFrame, true); err != nil {
		if !errors.Is(err, errClosing) {
			c.writeFailed(err)
		}
		return
	}
	c.mu.Lock()
	ka := c.legacy && c.acked
	c.mu.Unlock()
	if ka {
		if err := c.send([]byte(`{"type":"ka"}`)); err != nil {
			if !errors.Is(err, errClosing) {
				c.writeFailed(err)
			}
			return
		}
	}
	c.after(c.h.heartbeat(), c.keepAlive)
}

var pingFrame = gws.MustCompileFrame(gws.NewPingFrame(nil))

// end tells the client why the connection ends, once, and stops its
// subscriptions; the reader then waits up to closeWait for the client's
// close frame. err is why, for the subscriptions' log lines.
func (c *conn) end(cl closing, err error) {
	c.mu.Lock()
	if c.endErr != nil || c.closing.Load() {
		c.mu.Unlock()
		return
	}
	c.endErr = err
	c.mu.Unlock()
	c.closing.Store(true)
	c.cancel()
	// Cut short a write that waits for a stalled client: the close frame
	// should not wait for it.
	_ = c.nc.SetWriteDeadline(time.Now())
	c.wmu.Lock()
	if !c.sent && !c.broken {
		c.sent = true
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.h.writeTimeout()))
		frame := gws.MustCompileFrame(gws.NewCloseFrame(gws.NewCloseFrameBody(gws.StatusCode(cl.code), cl.reason)))
		_, werr := c.writerLocked().Write(frame)
		if werr == nil {
			werr = c.flushLocked()
		}
		if werr != nil {
			c.broken = true
		}
	}
	broken := c.broken
	c.wmu.Unlock()
	if broken {
		_ = c.nc.Close()
		return
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(closeWait))
}

// endFor ends the connection for why a subscription's stream ended.
func (c *conn) endFor(err error) {
	switch stream.Ending(err) {
	case stream.EndShutdown:
		c.end(closeFor(CloseShutdown, ws.ReasonShutdown), err)
	case stream.EndSlowConsumer:
		c.end(closeFor(CloseSlowConsumer, "slow consumer: resubscribe with after set to your last event id"), err)
	case stream.EndSubscriberGone:
		c.end(closeFor(CloseForbidden, "Forbidden: "+ws.ReasonSubscriberGone), err)
	case stream.EndTokenExpired:
		c.tokenExpired()
	case stream.EndClientClosed, stream.EndUnresponsive:
		c.mu.Lock()
		if c.endErr == nil {
			c.endErr = err
		}
		c.mu.Unlock()
		c.cancel()
		_ = c.nc.Close()
	default:
		c.end(closeFor(CloseInternalError, "internal error"), err)
	}
}

func (c *conn) tokenExpired() {
	c.expired.Do(c.expire)
}

func (c *conn) expire() {
	const reason = "Unauthorized: token expired; reconnect with a fresh token and after set to your last event id"
	if c.legacy {
		_ = c.send(connectionError(reason))
	}
	c.end(closeFor(CloseUnauthorized, reason), hub.ErrTokenExpired)
}

// writeFailed ends the connection after a failed write.
func (c *conn) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.endFor(fmt.Errorf("%w (%v)", hub.ErrSlowConsumer, err))
		return
	}
	c.endFor(fmt.Errorf("%w: write: %w", stream.ErrClientGone, err))
}

// writerLocked returns the connection's write buffer, taking one from the
// pool if it has none. Call with wmu held.
func (c *conn) writerLocked() *bufio.Writer {
	if c.bw == nil {
		c.bw = c.h.writer(c.nc)
	}
	return c.bw
}

// flushLocked flushes the write buffer and gives it back to the pool.
// Call with wmu held.
func (c *conn) flushLocked() error {
	if c.bw == nil {
		return nil
	}
	err := c.bw.Flush()
	if err == nil {
		c.h.putWriter(c.bw)
		c.bw = nil
	}
	return err
}

// errClosing refuses writes once the close frame is out.
var errClosing = errors.New("connection closing")

// writeRaw writes whole frames, flushing if asked.
func (c *conn) writeRaw(frames []byte, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sent || c.broken {
		return errClosing
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.h.writeTimeout()))
	_, err := c.writerLocked().Write(frames)
	if err == nil && flush {
		err = c.flushLocked()
	}
	if err != nil {
		c.broken = true
	}
	return err
}

// write writes msg as one text frame, without flushing.
func (c *conn) write(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sent || c.broken {
		return errClosing
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.h.writeTimeout()))
	bw := c.writerLocked()
	err := gws.WriteHeader(bw, gws.Header{Fin: true, OpCode: gws.OpText, Length: int64(len(msg))})
	if err == nil {
		_, err = bw.Write(msg)
	}
	if err != nil {
		c.broken = true
	}
	return err
}

func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sent || c.broken {
		return errClosing
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.h.writeTimeout()))
	err := c.flushLocked()
	if err != nil {
		c.broken = true
	}
	return err
}

// send writes msg as one text frame and flushes.
func (c *conn) send(msg []byte) error {
	if err := c.write(msg); err != nil {
		return err
	}
	return c.flush()
}

// reply sends a protocol message from the reader, ending the connection if
// the write fails.
func (c *conn) reply(msg []byte) {
	if err := c.send(msg); err != nil && !errors.Is(err, errClosing) {
		c.writeFailed(err)
	}
}

var errClientClosed = fmt.Errorf("%w: it sent a close frame", stream.ErrClientGone)

// read reads frames until the client closes, leaves or breaks the
// protocol, handing each text message to handle.
func (c *conn) read() error {
	var (
		msg        []byte
		fragmented bool
		binary     bool
		ctl        [125]byte
	)
	idle := c.h.heartbeat() + c.h.writeTimeout()
	for {
		if !c.closing.Load() {
			_ = c.nc.SetReadDeadline(time.Now().Add(idle))
			if c.closing.Load() {
				// end set the close handshake's deadline meanwhile.
				_ = c.nc.SetReadDeadline(time.Now().Add(closeWait))
			}
		}
		hdr, err := gws.ReadHeader(c.br)
		if err != nil {
			return c.readFailed(err)
		}
		state := gws.StateServerSide
		if fragmented {
			state = state.Set(gws.StateFragmented)
		}
		if err := gws.CheckHeader(hdr, state); err != nil {
			c.end(closeFor(CloseProtocolViolation, err.Error()), fmt.Errorf("%w: %w", stream.ErrClientGone, err))
			return c.drain()
		}
		if hdr.OpCode.IsControl() {
			p := ctl[:hdr.Length]
			if _, err := io.ReadFull(c.br, p); err != nil {
				return c.readFailed(err)
			}
			gws.Cipher(p, hdr.Mask, 0)
			if done, err := c.control(hdr.OpCode, p); done {
				return err
			}
			continue
		}
		if hdr.OpCode != gws.OpContinuation {
			msg, binary = msg[:0], hdr.OpCode == gws.OpBinary
		}
		fragmented = !hdr.Fin
		if int64(len(msg))+hdr.Length > int64(c.h.maxMessage()) {
			c.end(closeFor(CloseMessageTooBig, fmt.Sprintf("message over %d bytes", c.h.maxMessage())), stream.ErrClientGone)
			return c.drain()
		}
		start := len(msg)
		msg = append(msg, make([]byte, hdr.Length)...)
		if _, err := io.ReadFull(c.br, msg[start:]); err != nil {
			return c.readFailed(err)
		}
		gws.Cipher(msg[start:], hdr.Mask, 0)
		if fragmented || c.closing.Load() {
			continue
		}
		if binary {
			c.end(closeFor(CloseBadMessage, "binary messages are not part of the protocol: send JSON text"), stream.ErrClientGone)
			continue
		}
		c.handle(msg)
		if cap(msg) > 4<<10 {
			msg = nil // a large message's buffer is not kept
		}
	}
}

// readFailed is why reading ended: the client left, or (while closing)
// did not answer the close frame in time.
func (c *conn) readFailed(err error) error {
	if c.closing.Load() {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return stream.ErrUnresponsive
	}
	return fmt.Errorf("%w: %w", stream.ErrClientGone, err)
}

// drain reads, discarding, until the client's close frame or the close
// handshake's deadline, after the client broke the framing: nothing it
// sends can be parsed any more.
func (c *conn) drain() error {
	_, _ = io.Copy(io.Discard, c.br)
	return nil
}

// control handles a control frame; done says the connection is over.
func (c *conn) control(opc gws.OpCode, p []byte) (done bool, err error) {
	switch opc {
	case gws.OpPing:
		_ = c.writeRaw(gws.MustCompileFrame(gws.NewPongFrame(p)), true)
	case gws.OpClose:
		if c.closing.Load() {
			return true, nil
		}
		code, reason := gws.ParseCloseFrameData(p)
		reply := gws.NewCloseFrame(nil)
		if len(p) >= 2 && gws.CheckCloseFrameData(code, reason) == nil {
			reply = gws.NewCloseFrame(gws.NewCloseFrameBody(code, ""))
		}
		c.closing.Store(true)
		_ = c.writeRaw(gws.MustCompileFrame(reply), true)
		c.wmu.Lock()
		c.sent = true
		c.wmu.Unlock()
		return true, errClientClosed
	}
	return false, nil
}

// message is what each protocol message shares.
type message struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`
	Payload json.RawMessage `json:"payload"`
}

// handle acts on one message from the client.
func (c *conn) handle(b []byte) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil || m.Type == "" {
		c.bad("Invalid message received: a JSON object with a type")
		return
	}
	switch {
	case m.Type == "connection_init":
		c.init(m.Payload)
	case !c.legacy && m.Type == "ping":
		c.reply(pongMessage(m.Payload))
	case !c.legacy && m.Type == "pong":
	case !c.legacy && m.Type == "subscribe", c.legacy && m.Type == "start":
		c.subscribe(m)
	case !c.legacy && m.Type == "complete", c.legacy && m.Type == "stop":
		if id, ok := c.opID(m.ID); ok {
			c.stop(id)
		}
	case c.legacy && m.Type == "connection_terminate":
		c.end(closeFor(1000, "connection_terminate"), stream.ErrClientGone)
	default:
		c.bad(fmt.Sprintf("Invalid message received: type %q is not part of the %s protocol", truncate(m.Type), c.protocol()))
	}
}

func (c *conn) protocol() string {
	if c.legacy {
		return LegacyWS
	}
	return TransportWS
}

// bad closes the connection for a message the protocol does not allow.
func (c *conn) bad(reason string) {
	c.end(closeFor(CloseBadMessage, reason), stream.ErrClientGone)
}

func (c *conn) opID(raw json.RawMessage) (string, bool) {
	var id string
	if err := json.Unmarshal(raw, &id); err != nil || id == "" || len(id) > maxID {
		c.bad(fmt.Sprintf("Invalid message received: id must be a non-empty string of at most %d bytes", maxID))
		return "", false
	}
	return id, true
}

// init authenticates the connection: with the token of its connection_init
// payload, or else that of the handshake (header or access_token).
func (c *conn) init(payload json.RawMessage) {
	c.mu.Lock()
	again := c.inited
	c.inited = true
	c.mu.Unlock()
	if again {
		c.end(closeFor(CloseTooManyInits, "Too many initialisation requests"), stream.ErrClientGone)
		return
	}
	id, err := c.authenticate(payload)
	if err != nil {
		c.h.Gate.Refused(c.h.Transport, "", err)
	} else {
		err = c.h.Gate.Authorize(c.ctx, id, c.h.Transport)
	}
	if err != nil {
		c.refused(err)
		return
	}
	c.mu.Lock()
	c.id, c.acked = id, true
	c.mu.Unlock()
	if !id.Expires.IsZero() {
		c.after(time.Until(id.Expires), c.tokenExpired)
	}
	c.reply([]byte(`{"type":"connection_ack"}`))
	if c.legacy {
		c.reply([]byte(`{"type":"ka"}`))
	}
}

// refused ends a connection whose connection_init was refused.
func (c *conn) refused(err error) {
	status := stream.Status(err)
	code := uint16(CloseTryAgainLater)
	reason := "temporarily unavailable; retry shortly"
	switch {
	case status == http.StatusUnauthorized, status == http.StatusBadRequest:
		code, reason = CloseUnauthorized, "Unauthorized: "+err.Error()
	case status == http.StatusForbidden:
		code, reason = CloseForbidden, "Forbidden: the token's subject is not a subscriber"
	case errors.Is(err, hub.ErrShutdown):
		code, reason = CloseShutdown, ws.ReasonShutdown
	}
	if c.legacy {
		_ = c.send(connectionError(reason))
	}
	c.end(closeFor(code, reason), err)
}

// authenticate finds the connection's token and checks it.
func (c *conn) authenticate(payload json.RawMessage) (auth.Identity, error) {
	token, err := payloadToken(payload)
	if err != nil {
		return auth.Identity{}, err
	}
	if token == "" {
		return c.h.Gate.Auth.Authenticate(c.r)
	}
	if h := handshakeToken(c.r); h != "" && h != token {
		return auth.Identity{}, fmt.Errorf("%w: different tokens in the connection_init payload and the handshake", auth.ErrBadToken)
	}
	return c.h.Gate.Auth.VerifyIdentity(token)
}

func handshakeToken(r *http.Request) string {
	if _, rest, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok {
		return strings.TrimSpace(rest)
	}
	return r.URL.Query().Get("access_token")
}

// payloadToken reads the token of a connection_init payload:
// {"authorization": "Bearer <jwt>"} (any case of the key, also under
// "headers", as clients that forward HTTP headers send it) or
// {"access_token": "<jwt>"}. "" means the payload carries none.
func payloadToken(payload json.RawMessage) (string, error) {
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 || string(payload) == "null" {
		return "", nil
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(payload, &p); err != nil {
		return "", fmt.Errorf("%w: the connection_init payload must be a JSON object", auth.ErrBadToken)
	}
	if h, ok := p["headers"]; ok {
		var hp map[string]json.RawMessage
		if json.Unmarshal(h, &hp) == nil {
			for k, v := range hp {
				if _, ok := p[k]; !ok {
					p[k] = v
				}
			}
		}
	}
	var bearer, raw string
	for k, v := range p {
		var s string
		switch strings.ToLower(k) {
		case "authorization":
			if json.Unmarshal(v, &s) != nil {
				return "", fmt.Errorf("%w: authorization in the connection_init payload must be a string \"Bearer <jwt>\"", auth.ErrBadToken)
			}
			scheme, rest, ok := strings.Cut(strings.TrimSpace(s), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
				return "", fmt.Errorf("%w: authorization in the connection_init payload must be \"Bearer <jwt>\"", auth.ErrBadToken)
			}
			bearer = strings.TrimSpace(rest)
		case "access_token":
			if json.Unmarshal(v, &s) != nil || s == "" {
				return "", fmt.Errorf("%w: access_token in the connection_init payload must be a non-empty string", auth.ErrBadToken)
			}
			raw = s
		}
	}
	if bearer != "" && raw != "" && bearer != raw {
		return "", fmt.Errorf("%w: different tokens in authorization and access_token", auth.ErrBadToken)
	}
	if bearer != "" {
		return bearer, nil
	}
	return raw, nil
}

// subscribe starts an operation: a query is answered at once, a
// subscription opens a stream.
func (c *conn) subscribe(m message) {
	c.mu.Lock()
	acked := c.acked
	c.mu.Unlock()
	if !acked {
		c.end(closeFor(CloseUnauthorized, "Unauthorized: send connection_init first"), stream.ErrClientGone)
		return
	}
	id, ok := c.opID(m.ID)
	if !ok {
		return
	}
	var req request
	if err := json.Unmarshal(m.Payload, &req); err != nil || req.Query == "" {
		c.bad("Invalid message received: the payload must be an object with a query string")
		return
	}
	c.mu.Lock()
	_, running := c.ops[id]
	n := len(c.ops)
	c.mu.Unlock()
	if running {
		if !c.legacy {
			c.end(closeFor(CloseDuplicateID, "Subscriber for "+truncate(id)+" already exists"), stream.ErrClientGone)
			return
		}
		// As subscriptions-transport-ws's server does: the new start
		// replaces the running one.
		c.stop(id)
		n--
	}
	s, err := c.h.Schema.Get(c.ctx)
	if err != nil {
		c.h.Log.Error("load the graphql schema", "err", err)
		c.opError(id, errorList("temporarily unavailable; retry shortly", "UNAVAILABLE"))
		return
	}
	o, errs := compile(s, req)
	if len(errs) > 0 {
		b, _ := json.Marshal(errs)
		c.opError(id, b)
		return
	}
	if o.Result != nil {
		c.result(id, o.Result)
		c.reply(completeMessage(id))
		return
	}
	if n >= c.h.maxOperations() {
		c.opError(id, errorList(fmt.Sprintf("at most %d subscriptions on one connection", c.h.maxOperations()), "TOO_MANY_SUBSCRIPTIONS"))
		return
	}
	c.mu.Lock()
	ident := c.id
	c.mu.Unlock()
	adm, err := c.h.Gate.AdmitAs(c.ctx, ident, stream.Request{Topics: []string{o.Topic.Name}, After: o.After}, c.h.Transport)
	if err != nil {
		c.admitFailed(id, err)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	running2 := &op{cancel: cancel}
	c.mu.Lock()
	c.ops[id] = running2
	c.mu.Unlock()
	c.wg.Add(1)
	go c.run(ctx, id, running2, adm, &sink{c: c, id: id, op: o, shape: c.h.shapes.acquire(o)})
}

// admitFailed tells the client why a subscription was not opened: the
// subscriber's deletion ends the connection, anything else the operation.
func (c *conn) admitFailed(id string, err error) {
	status := stream.Status(err)
	switch {
	case status == http.StatusForbidden:
		c.refused(err)
	case status >= 500 && !errors.Is(err, hub.ErrShutdown) && !errors.Is(err, limit.ErrRelayFull):
		c.opError(id, errorList("temporarily unavailable; retry shortly", "UNAVAILABLE"))
	case status == http.StatusTooManyRequests:
		c.opError(id, errorList(err.Error(), "TOO_MANY_SUBSCRIPTIONS"))
	case status >= 500:
		c.opError(id, errorList(err.Error(), "UNAVAILABLE"))
	default:
		c.opError(id, errorList(err.Error(), "BAD_REQUEST"))
	}
}

// run serves one subscription's stream until it ends.
func (c *conn) run(ctx context.Context, id string, o *op, adm *stream.Admitted, s *sink) {
	defer c.wg.Done()
	defer c.h.shapes.release(s.shape)
	err := adm.Run(ctx, s)
	c.mu.Lock()
	if c.ops[id] == o {
		delete(c.ops, id)
	}
	connErr := c.endErr
	c.mu.Unlock()
	stopped := ctx.Err() != nil
	if stopped && connErr != nil && errors.Is(err, context.Canceled) {
		err = connErr // the connection's end is the stream's
	}
	adm.End(err)
	if !stopped {
		if errors.Is(err, errClosing) {
			return
		}
		c.endFor(err)
	}
}

// stop ends a running operation at the client's request.
func (c *conn) stop(id string) {
	c.mu.Lock()
	o := c.ops[id]
	delete(c.ops, id)
	c.mu.Unlock()
	if o != nil {
		o.cancel()
	}
}

// opError tells the client an operation failed; errs is a JSON array of
// GraphQL errors. graphql-transport-ws has an error message for it; the
// legacy protocol's servers send the errors as a result, then complete.
func (c *conn) opError(id string, errs []byte) {
	if c.legacy {
		c.reply(envelope(id, "data", append(append([]byte(`{"errors":`), errs...), '}')))
		c.reply(completeMessage(id))
		return
	}
	c.reply(envelope(id, "error", errs))
}

// result sends one execution result of an operation.
func (c *conn) result(id string, payload []byte) {
	c.reply(envelope(id, c.nextType(), payload))
}

func (c *conn) nextType() string {
	if c.legacy {
		return "data"
	}
	return "next"
}

func envelope(id, typ string, payload []byte) []byte {
	b := append([]byte(`{"id":`), mustJSON(id)...)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","payload":`...)
	b = append(b, payload...)
	return append(b, '}')
}

func completeMessage(id string) []byte {
	return append(append([]byte(`{"id":`), mustJSON(id)...), `,"type":"complete"}`...)
}

func pongMessage(payload json.RawMessage) []byte {
	if len(bytes.TrimSpace(payload)) == 0 {
		return []byte(`{"type":"pong"}`)
	}
	return append(append([]byte(`{"type":"pong","payload":`), payload...), '}')
}

func connectionError(msg string) []byte {
	return append(append([]byte(`{"type":"connection_error","payload":{"message":`), mustJSON(msg)...), `}}`...)
}

func errorList(msg, code string) []byte {
	return mustJSON([]map[string]any{{"message": msg, "extensions": map[string]any{"code": code}}})
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func truncate(s string) string {
	if len(s) > 48 {
		return s[:48] + "…"
	}
	return s
}

// sink writes one subscription's results.
type sink struct {
	c       *conn
	id      string
	op      *operation
	shape   *shape
	scratch []byte
}

func (s *sink) message(build func([]byte) ([]byte, error)) error {
	b := append(s.scratch[:0], `{"id":`...)
	b = append(b, mustJSON(s.id)...)
	b = append(b, `,"type":"`...)
	b = append(b, s.c.nextType()...)
	b = append(b, `","payload":`...)
	b, err := build(b)
	if err != nil {
		return err
	}
	b = append(b, '}')
	if cap(b) <= 64<<10 {
		s.scratch = b // large rows' buffers are not kept
	}
	return writeErr(s.c.write(b))
}

// writeErr says why a write failed as Stream.Run's caller classifies it: a
// timeout is a slow consumer (Classify), anything else the client leaving.
func writeErr(err error) error {
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errClosing) {
		return err
	}
	return fmt.Errorf("%w: write: %w", stream.ErrClientGone, err)
}

func (s *sink) Event(m *hub.Message) error {
	return s.message(func(b []byte) ([]byte, error) { return s.op.encode(b, m, s.shape, &s.c.h.shapes) })
}

func (s *sink) Reset(at eventlog.ID) error {
	return s.message(func(b []byte) ([]byte, error) { return s.op.resetResult(b, at), nil })
}

// Heartbeat is left to the connection's keep-alive.
func (s *sink) Heartbeat() error { return nil }

func (s *sink) Flush() error { return writeErr(s.c.flush()) }
