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
	sched     *netpump.Scheduler[*conn]

	// mu guards wheel, which holds the open connections and spreads their
	// pings over the heartbeat interval, and closing, which holds those
	// waiting for the client's close frame.
	mu      sync.Mutex
	wheel   *netpump.Wheel[*conn]
	closing map[*conn]struct{}

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

// Why a connection was woken, besides events to write (no flag).
const (
	readable netpump.Flags = 1 << iota // the client sent something
	pingDue                            // its heartbeat is due
	expired                            // the close handshake took longer than closeWait
)

// conn is one upgraded connection. Whoever holds it (see netpump.Scheduler)
// owns its socket and the fields below slot.
type conn struct {
	netpump.Task
	adm     *stream.Admitted
	nc      net.Conn
	raw     syscall.RawConn // nc's descriptor, for reads and writes that must not wait
	early   []byte          // what the client sent behind its handshake, read by net/http
	untrack func()
	unwatch func()

	// guarded by pump.mu
	slot    int
	closeBy time.Time

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
	return &pump{
		log: log, heartbeat: heartbeat, timeout: timeout, poller: poller,
		sched:   netpump.NewScheduler[*conn](),
		wheel:   netpump.NewWheel[*conn](),
		closing: map[*conn]struct{}{},
	}, nil
}

// run serves until ctx is done, then calls detach (no new connections are
// handed over from then on), closes every connection with 1012 and returns
// once all are closed.
func (p *pump) run(ctx context.Context, detach func()) {
	go p.poller.Run()
	p.sched.Start(2*runtime.GOMAXPROCS(0), func() func(*conn, netpump.Flags) {
		buf := make([]byte, readBuffer)
		return func(c *conn, f netpump.Flags) { p.turn(c, f, buf) }
	})
	// The ticker keeps turning while the pump stops: it is what ends close
	// handshakes the clients do not complete.
	tick := time.NewTicker(netpump.Tick(p.heartbeat))
	defer tick.Stop()
	done := ctx.Done()
	var drained <-chan struct{}
	for slot := 0; ; {
		select {
		case <-done:
			done = nil
			detach()
			drained = p.beginStop()
		case <-drained:
			p.sched.Stop()
			p.blocked.Wait()
			p.poller.Close()
			return
		case now := <-tick.C:
			p.mu.Lock()
			for c := range p.wheel.Slot(slot) {
				p.sched.Wake(c, pingDue)
			}
			for c := range p.closing {
				if now.After(c.closeBy) {
					p.sched.Wake(c, expired)
				}
			}
			p.mu.Unlock()
			slot = (slot + 1) % netpump.WheelSlots
		}
	}
}

// beginStop makes every open connection close with 1012 at its next turn
// (writes that wait for their clients give up at once: the scheduler's
// Stopping), and returns what is closed once every connection is.
func (p *pump) beginStop() <-chan struct{} {
	drained := p.sched.Drain()
	p.mu.Lock()
	defer p.mu.Unlock()
	for slot := range netpump.WheelSlots {
		for c := range p.wheel.Slot(slot) {
			p.sched.Wake(c, 0)
		}
	}
	return drained
}

// add takes over c, past its replay. If endErr is set the replay ended the
// stream, and the pump only closes it. add returns false if the pump is
// stopping; the caller then still owns c.
func (p *pump) add(c *conn, endErr error) bool {
	if !p.sched.Admit(c) {
		return false
	}
	c.endErr = endErr
	p.mu.Lock()
	c.slot = p.wheel.Add(c)
	p.mu.Unlock()
	unwatch, err := p.poller.Watch(c.nc, netpump.Readable, func() { p.sched.Wake(c, readable) })
	if err != nil {
		// Unwatched, the client's pongs go unread: it is dropped as
		// unresponsive after the write timeout.
		p.log.Warn("watch websocket connection", "user", c.adm.Request.Subscriber, "err", err)
		unwatch = func() {}
	}
	c.unwatch = unwatch
	c.adm.Notify(func() { p.sched.Wake(c, 0) })
	// The first turn reads whatever the client sent meanwhile and delivers
	// the events queued during the replay, before Notify was set.
	p.sched.Wake(c, readable)
	p.sched.Done(c)
	return true
}

// turn serves c, which the caller holds, for the reasons in f.
func (p *pump) turn(c *conn, f netpump.Flags, buf []byte) {
	w := p.bufs.Get(c.raw)
	if c.closeSent {
		p.serveClosing(c, f, w, buf)
	} else {
		p.serve(c, f, w, buf)
	}
}

// serve reads what the client sent, writes what c has to send, or starts
// closing it. It owns w.
func (p *pump) serve(c *conn, f netpump.Flags, w *netpump.Writer, buf []byte) {
	if f&readable != 0 {
		switch err := p.read(c, w, buf); {
		case err == nil:
		case errors.Is(err, errMoreToRead):
			p.sched.Wake(c, readable) // a rerun: epoll reports only what arrives later
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
	if err == nil && p.sched.Draining() {
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
	if err == nil && f&pingDue != 0 {
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
		p.sched.Done(c)
	default:
		// The client's socket buffer is full: wait for it, up to the write
		// timeout, without holding up a worker.
		p.blocked.Add(1)
		go p.writeBlocked(c, w)
	}
}

// serveClosing waits, reading, for the client's close frame.
func (p *pump) serveClosing(c *conn, f netpump.Flags, w *netpump.Writer, buf []byte) {
	if f&readable != 0 {
		err := p.read(c, w, buf)
		switch {
		case errors.Is(err, errMoreToRead):
			p.sched.Wake(c, readable)
		case err != nil:
			// The client's close frame, or it left, or it sent garbage:
			// the handshake is over either way.
			p.bufs.Put(w)
			p.terminate(c, c.endErr)
			return
		}
	}
	p.bufs.Put(w)
	if f&expired != 0 {
		p.terminate(c, c.endErr)
		return
	}
	p.sched.Done(c)
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

// startClose sends a close frame and waits for the client's. Behind a full
// socket (a replay that just filled it, a client reading slowly) the frame
// is written on a goroutine that may wait, up to closeWait: the client is
// told why its stream ended rather than seeing the connection drop.
func (p *pump) startClose(c *conn, w *netpump.Writer, code uint16, reason string, err error) {
	_ = w.Frame(closeFrame(code, reason))
	_ = w.Flush()
	switch {
	case w.Err() != nil:
		p.bufs.Put(w)
		p.terminate(c, err)
	case w.Blocked():
		p.blocked.Add(1)
		go p.closeBlocked(c, w, err)
	default:
		p.bufs.Put(w)
		p.awaitClose(c, err)
	}
}

// closeBlocked finishes writing a close frame the socket did not take at
// once, then waits for the client's, or closes c if the client does not
// take it within closeWait.
func (p *pump) closeBlocked(c *conn, w *netpump.Writer, err error) {
	defer p.blocked.Done()
	// The stream has ended already: only the pump's stop cuts this short.
	werr := w.WriteRest(c.nc, closeWait, nil, p.sched.Stopping())
	p.bufs.Put(w)
	if werr != nil {
		p.terminate(c, err)
		return
	}
	p.awaitClose(c, err)
}

// awaitClose marks c as waiting for the client's close frame, which must
// come within closeWait.
func (p *pump) awaitClose(c *conn, err error) {
	c.closeSent, c.endErr = true, err
	p.mu.Lock()
	p.wheel.Remove(c, c.slot)
	p.closing[c] = struct{}{}
	c.closeBy = time.Now().Add(closeWait)
	p.mu.Unlock()
	p.sched.Done(c)
}

// writeBlocked writes what the socket did not take at once, then hands c
// back, or closes it if the write failed.
func (p *pump) writeBlocked(c *conn, w *netpump.Writer) {
	defer p.blocked.Done()
	err := w.WriteRest(c.nc, p.timeout, c.adm.Done(), p.sched.Stopping())
	p.bufs.Put(w)
	switch {
	case err == nil:
		p.sched.Done(c)
	case p.sched.Draining():
		p.terminate(c, hub.ErrShutdown)
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Timed out, or cut short because the hub ended the stream:
		// Classify says which.
		p.terminate(c, c.adm.Classify(err))
	default:
		p.terminate(c, writeFailed(err))
	}
}

// terminate closes c's socket and ends its stream. The caller holds c.
func (p *pump) terminate(c *conn, err error) {
	if c.unwatch != nil {
		c.unwatch()
	}
	_ = c.nc.Close()
	c.adm.End(err)
	c.untrack()
	p.mu.Lock()
	p.wheel.Remove(c, c.slot)
	delete(p.closing, c)
	p.mu.Unlock()
	p.sched.Drop(c)
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
