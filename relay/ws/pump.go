package ws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/netpump"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// pump serves upgraded connections past their replay from a few worker
// goroutines, as the SSE pump does: an idle connection is a small struct, a
// hub subscription and a socket. The hub says which streams have events
// (stream.Notify), the epoll set which clients sent something (a ping, a
// pong, a close frame, stray messages), the heartbeat wheel which are due a
// ping; a worker takes each such connection in turn, reads what the client
// sent, and writes without blocking. A client whose socket buffer is full
// gets a goroutine of its own for as long as its write blocks.
//
// A connection ends in one of two ways: at once (the client left, broke
// the protocol's framing beyond answering, or stopped answering pings), or
// through a close handshake: the relay sends a close frame, keeps reading
// until the client's close frame arrives or closeWait passes, then closes
// the socket.
type pump struct {
	log       *slog.Logger
	heartbeat time.Duration
	timeout   time.Duration
	poller    *netpump.Poller

	mu       sync.Mutex
	work     *sync.Cond
	ready    []*conn
	stopping bool
	quit     bool
	conns    int // in the pump, open or closing
	drained  chan struct{}
	// wheel holds the open connections and spreads their pings over the
	// heartbeat interval; closing holds those waiting for the client's
	// close frame.
	wheel   *netpump.Wheel[*conn]
	closing map[*conn]struct{}

	workers sync.WaitGroup
	blocked sync.WaitGroup
	bufs    netpump.WriterPool
}

// closeWait bounds a close handshake: how long the relay waits for the
// client's close frame after sending its own.
const closeWait = 5 * time.Second

// maxReadPerTurn bounds what one turn reads from a client, so that a client
// that keeps sending cannot hold a worker from the others.
const maxReadPerTurn = 64 << 10

// readBuffer is the size of each worker's read buffer.
const readBuffer = 16 << 10

// connState says who may touch a conn's socket and its runner-owned fields.
type connState uint8

const (
	idle    connState = iota // nobody: waiting for events
	queued                   // in pump.ready
	running                  // a worker, or a blocked write, owns it
	rerun                    // running, and woken again since it started
	gone                     // closed
)

// conn is one upgraded connection.
type conn struct {
	adm     *stream.Admitted
	nc      net.Conn
	raw     syscall.RawConn // nc's descriptor, for reads and writes that must not wait
	early   []byte          // what the client sent behind its handshake, read by net/http
	untrack func()
	unwatch func()

	// guarded by pump.mu
	state     connState
	readable  bool
	ping      bool
	expired   bool // the close handshake took longer than closeWait
	blockedOn bool // a blocked write owns the connection
	slot      int
	closeBy   time.Time

	// owned by whoever runs the connection (see connState)
	frames    frameReader
	pingSent  time.Time // zero: no ping unanswered
	closeSent bool
	endErr    error // why the stream ends, once decided
}

func newPump(log *slog.Logger, heartbeat, timeout time.Duration) (*pump, error) {
	poller, err := netpump.NewPoller()
	if err != nil {
		return nil, fmt.Errorf("watch websocket connections: %w", err)
	}
	p := &pump{
		log: log, heartbeat: heartbeat, timeout: timeout, poller: poller,
		drained: make(chan struct{}),
		wheel:   netpump.NewWheel[*conn](),
		closing: map[*conn]struct{}{},
	}
	p.work = sync.NewCond(&p.mu)
	return p, nil
}

// run serves until ctx is done, then calls detach (no new connections are
// handed over from then on), closes every connection with 1012 and returns
// once all are closed.
func (p *pump) run(ctx context.Context, detach func()) {
	go p.poller.Run()
	n := 2 * runtime.GOMAXPROCS(0)
	p.workers.Add(n)
	for range n {
		go p.worker()
	}
	// The ticker keeps turning while the pump stops: it is what ends close
	// handshakes the clients do not complete.
	tick := time.NewTicker(netpump.Tick(p.heartbeat))
	defer tick.Stop()
	done := ctx.Done()
	for slot := 0; ; {
		select {
		case <-done:
			done = nil
			detach()
			p.beginStop()
		case <-p.drained:
			p.finish()
			return
		case now := <-tick.C:
			p.mu.Lock()
			for c := range p.wheel.Slot(slot) {
				c.ping = true
				p.wakeLocked(c)
			}
			for c := range p.closing {
				if now.After(c.closeBy) {
					c.expired = true
					p.wakeLocked(c)
				}
			}
			p.mu.Unlock()
			slot = (slot + 1) % netpump.WheelSlots
		}
	}
}

// beginStop makes every open connection close with 1012 at its next turn,
// and cuts short the writes that wait for their clients.
func (p *pump) beginStop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopping = true
	for slot := range netpump.WheelSlots {
		for c := range p.wheel.Slot(slot) {
			p.wakeLocked(c)
			if c.blockedOn {
				_ = c.nc.SetWriteDeadline(time.Now())
			}
		}
	}
	p.drainedLocked()
}

// finish stops the workers once every connection is closed.
func (p *pump) finish() {
	p.mu.Lock()
	p.quit = true
	p.work.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
	p.blocked.Wait()
	p.poller.Close()
}

func (p *pump) drainedLocked() {
	if !p.stopping || p.conns > 0 {
		return
	}
	select {
	case <-p.drained:
	default:
		close(p.drained)
	}
}

// add takes over c, past its replay. If endErr is set the replay ended the
// stream, and the pump only closes it. add returns false if the pump is
// stopping; the caller then still owns c.
func (p *pump) add(c *conn, endErr error) bool {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		return false
	}
	p.conns++
	c.state = running // until the first turn is queued below
	c.slot = p.wheel.Add(c)
	c.readable = true // whatever the client sent meanwhile
	c.endErr = endErr
	p.mu.Unlock()

	unwatch, err := p.poller.Watch(c.nc, netpump.Readable, func() {
		p.mu.Lock()
		c.readable = true
		p.wakeLocked(c)
		p.mu.Unlock()
	})
	if err != nil {
		// Unwatched, the client's pongs go unread: it is dropped as
		// unresponsive after the write timeout.
		p.log.Warn("watch websocket connection", "user", c.adm.Request.Subscriber, "err", err)
		unwatch = func() {}
	}
	c.unwatch = unwatch
	c.adm.Notify(func() { p.wake(c) })
	p.finished(c)
	p.wake(c)
	return true
}

func (p *pump) wake(c *conn) {
	p.mu.Lock()
	p.wakeLocked(c)
	p.mu.Unlock()
}

func (p *pump) wakeLocked(c *conn) {
	switch c.state {
	case idle:
		c.state = queued
		p.ready = append(p.ready, c)
		p.work.Signal()
	case running:
		c.state = rerun
	}
}

// finished hands c back after a worker or a blocked write is done with it.
func (p *pump) finished(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.blockedOn = false
	if c.state == rerun {
		c.state = queued
		p.ready = append(p.ready, c)
		p.work.Signal()
		return
	}
	c.state = idle
}

// turn is what a worker learned about a connection when it took it.
type turn struct {
	readable, ping, expired, stopping bool
}

func (p *pump) next() (*conn, turn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.ready) == 0 && !p.quit {
		p.work.Wait()
	}
	if len(p.ready) == 0 {
		return nil, turn{}
	}
	c := p.ready[0]
	p.ready[0] = nil
	p.ready = p.ready[1:]
	c.state = running
	t := turn{readable: c.readable, ping: c.ping, expired: c.expired, stopping: p.stopping}
	c.readable, c.ping, c.expired = false, false, false
	return c, t
}

func (p *pump) worker() {
	defer p.workers.Done()
	buf := make([]byte, readBuffer)
	for {
		c, t := p.next()
		if c == nil {
			return
		}
		w := p.bufs.Get(c.raw)
		if c.closeSent {
			p.serveClosing(c, t, w, buf)
		} else {
			p.serve(c, t, w, buf)
		}
	}
}

// serve reads what the client sent, writes what c has to send, or starts
// closing it. It owns w.
func (p *pump) serve(c *conn, t turn, w *netpump.Writer, buf []byte) {
	if t.readable {
		switch err := p.read(c, w, buf); {
		case err == nil:
		case errors.Is(err, errMoreToRead):
			p.mu.Lock()
			c.readable = true
			p.wakeLocked(c) // a rerun: epoll reports only what arrives later
			p.mu.Unlock()
		case errors.Is(err, errClientClosed):
			_ = w.Flush() // the close frame that answers the client's
			p.bufs.Put(w)
			p.terminate(c, stream.ErrClientGone)
			return
		default:
			var ce *clientError
			if errors.As(err, &ce) && w.Err() == nil {
				p.startClose(c, w, ce.code, ce.err.Error(), fmt.Errorf("%w: %w", stream.ErrClientGone, err))
				return
			}
			p.bufs.Put(w)
			p.terminate(c, fmt.Errorf("read from client: %w (%w)", stream.ErrClientGone, err))
			return
		}
	}
	err := c.adm.Err()
	if err == nil && t.stopping {
		err = hub.ErrShutdown
	}
	if err == nil {
		err = c.endErr
	}
	if err != nil {
		p.end(c, w, err)
		return
	}
	err = c.adm.Deliver(liveSink{w})
	if err == nil && t.ping {
		switch {
		case c.pingSent.IsZero():
			err = w.Frame(pingFrame)
			c.pingSent = time.Now()
		case time.Since(c.pingSent) >= p.timeout-netpump.Tick(p.heartbeat):
			// The ping before went unanswered for the write timeout
			// (within a tick of the wheel): nobody is listening, so no
			// close frame either.
			p.bufs.Put(w)
			p.terminate(c, stream.ErrUnresponsive)
			return
		}
	}
	if err == nil {
		err = w.Flush()
	}
	switch {
	case w.Err() != nil:
		p.bufs.Put(w)
		p.terminate(c, writeFailed(w.Err()))
	case err != nil:
		// The hub ended the stream during Deliver.
		p.end(c, w, err)
	case !w.Blocked():
		p.bufs.Put(w)
		p.finished(c)
	default:
		p.block(c, w)
	}
}

// serveClosing waits, reading, for the client's close frame.
func (p *pump) serveClosing(c *conn, t turn, w *netpump.Writer, buf []byte) {
	if t.readable {
		err := p.read(c, w, buf)
		switch {
		case errors.Is(err, errMoreToRead):
			p.mu.Lock()
			c.readable = true
			p.wakeLocked(c)
			p.mu.Unlock()
		case err != nil:
			// The client's close frame, or it left, or it sent garbage:
			// the handshake is over either way.
			p.bufs.Put(w)
			p.terminate(c, c.endErr)
			return
		}
	}
	p.bufs.Put(w)
	if t.expired {
		p.terminate(c, c.endErr)
		return
	}
	p.finished(c)
}

// end closes c for err, with the close frame that tells the client why, or
// at once where there is nobody to tell.
func (p *pump) end(c *conn, w *netpump.Writer, err error) {
	cl, ok := closes[stream.Ending(err)]
	if !ok {
		p.bufs.Put(w)
		p.terminate(c, err)
		return
	}
	p.startClose(c, w, cl.code, cl.reason, err)
}

// startClose sends a close frame and waits for the client's. Behind a
// stalled socket the frame could not be sent now, nor be waited for: the
// connection is closed at once.
func (p *pump) startClose(c *conn, w *netpump.Writer, code uint16, reason string, err error) {
	if !w.Blocked() {
		_ = w.Frame(closeFrame(code, reason))
		_ = w.Flush()
	}
	blocked := w.Blocked() || w.Err() != nil
	p.bufs.Put(w)
	if blocked {
		p.terminate(c, err)
		return
	}
	c.closeSent, c.endErr = true, err
	p.mu.Lock()
	p.wheel.Remove(c, c.slot)
	p.closing[c] = struct{}{}
	c.closeBy = time.Now().Add(closeWait)
	p.mu.Unlock()
	p.finished(c)
}

// block hands c, whose socket is full, to a goroutine that waits for the
// client up to the write timeout, so that no worker waits.
func (p *pump) block(c *conn, w *netpump.Writer) {
	p.mu.Lock()
	c.blockedOn = true
	stopping := p.stopping
	p.mu.Unlock()
	if stopping {
		p.bufs.Put(w)
		p.terminate(c, hub.ErrShutdown)
		return
	}
	p.blocked.Add(1)
	go p.writeBlocked(c, w)
}

// writeBlocked writes what the socket did not take at once, waiting for the
// client up to the write timeout, or until the hub ends the stream: a client
// cut off as too slow lets go of its frames at once, not at the timeout.
func (p *pump) writeBlocked(c *conn, w *netpump.Writer) {
	defer p.blocked.Done()
	ended := c.adm.Done()
	stopWatch, watchDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-ended:
			_ = c.nc.SetWriteDeadline(time.Now())
		case <-stopWatch:
		}
	}()
	_ = c.nc.SetWriteDeadline(time.Now().Add(p.timeout))
	p.mu.Lock()
	if p.stopping {
		// beginStop may have cut the deadline short before the line above.
		_ = c.nc.SetWriteDeadline(time.Now())
	}
	p.mu.Unlock()
	select {
	case <-ended: // and so may the watcher
		_ = c.nc.SetWriteDeadline(time.Now())
	default:
	}
	err := w.WriteRest(c.nc)
	close(stopWatch)
	<-watchDone
	p.bufs.Put(w)
	if err == nil {
		// WriteNow honours deadlines too: clear this one.
		err = c.nc.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		switch {
		case stopping:
			p.terminate(c, hub.ErrShutdown)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Timed out, or cut short because the hub ended the stream:
			// Classify says which.
			p.terminate(c, c.adm.Classify(err))
		default:
			p.terminate(c, writeFailed(err))
		}
		return
	}
	p.finished(c)
}

// terminate closes c's socket and ends its stream. The caller owns c.
func (p *pump) terminate(c *conn, err error) {
	if c.unwatch != nil {
		c.unwatch()
	}
	_ = c.nc.Close()
	c.adm.End(err)
	c.untrack()
	p.mu.Lock()
	defer p.mu.Unlock()
	c.state = gone
	p.wheel.Remove(c, c.slot)
	delete(p.closing, c)
	p.conns--
	p.drainedLocked()
}

var (
	errMoreToRead   = errors.New("more to read than one turn takes")
	errClientClosed = errors.New("the client sent a close frame")
)

// read reads and handles what the client sent until the socket is empty
// (nil), the turn's share is used up (errMoreToRead), the client closed
// (errClientClosed, its close frame answered in w), or it left or broke
// the protocol.
func (p *pump) read(c *conn, w *netpump.Writer, buf []byte) error {
	on := func(f control) error { return p.control(c, w, f) }
	if b := c.early; b != nil {
		c.early = nil
		if err := c.frames.feed(b, on); err != nil {
			return err
		}
	}
	for total := 0; total < maxReadPerTurn; {
		n, err := netpump.ReadNow(c.raw, buf)
		if n > 0 {
			if err := c.frames.feed(buf[:n], on); err != nil {
				return err
			}
			total += n
		}
		if err != nil {
			return fmt.Errorf("read from client: %w", err)
		}
		if n == 0 {
			return nil
		}
	}
	return errMoreToRead
}

// control handles a control frame from the client.
func (p *pump) control(c *conn, w *netpump.Writer, f control) error {
	switch f.op {
	case ws.OpPing:
		if !c.closeSent {
			_, _ = w.Write(pongFrame(f.payload))
		}
	case ws.OpPong:
		c.pingSent = time.Time{}
	case ws.OpClose:
		if c.closeSent {
			return errClientClosed
		}
		reply, err := closeReply(f.payload)
		if err != nil {
			return err
		}
		_ = w.Frame(reply)
		return errClientClosed
	}
	return nil
}

// liveSink writes live events as text messages through a pump's writer:
// the header is copied, the message (shared by every recipient) is not.
type liveSink struct{ w *netpump.Writer }

func (s liveSink) message(b []byte) error {
	var hdr [maxDataHeader]byte
	if _, err := s.w.Write(textHeader(hdr[:0], len(b))); err != nil {
		return err
	}
	return s.w.Frame(b)
}

func (s liveSink) Event(m *hub.Message) error { return s.message(m.WS()) }

func (s liveSink) Reset(at eventlog.ID) error { return s.message(resetMessage(at)) }

// Heartbeat is not called by Deliver; the pump pings on its wheel.
func (s liveSink) Heartbeat() error { return nil }

func (s liveSink) Flush() error { return s.w.Flush() }
