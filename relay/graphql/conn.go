package graphql

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	gws "github.com/gobwas/ws"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/hub"
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
	release  func() // gives the connection's place back (Handler.Connections)
	ops      map[string]*op
	endErr   error
	timers   map[*time.Timer]struct{}
	finished bool
	// the deliverer (deliver.go)
	delivering, dirty bool
	stoppedOps        []*op // stopped live subscriptions the deliverer has yet to end

	expired sync.Once
}

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

// finish closes the socket, waits for the goroutines that write and ends
// the subscriptions.
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
	c.endOps()
	if c.release != nil {
		c.release()
	}
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
