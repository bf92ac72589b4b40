package sse

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

	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/netpump"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// pump writes live events to streams whose connections it owns, from a few
// worker goroutines instead of one goroutine per connection: an idle stream
// is a small struct, a hub subscription and a socket. This is what lets a
// relay hold tens of thousands of idle streams in little memory.
//
// The hub tells the pump which streams have events (stream.Notify); a worker
// takes each such stream in turn and writes its events without blocking,
// small ones gathered in a small pooled buffer, large ones straight from the
// shared message. A client whose socket buffer is full gets a goroutine of
// its own for as long as its write blocks, up to the write timeout or until
// the hub cuts it off; a client that closes its connection is noticed by the
// hangup watcher, not by a reader per connection.
type pump struct {
	log       *slog.Logger
	heartbeat time.Duration
	timeout   time.Duration
	hangups   *netpump.Poller

	mu       sync.Mutex
	work     *sync.Cond
	ready    []*liveConn
	stopping bool
	quit     bool
	drained  chan struct{}

	// wheel holds every stream in the pump and spreads their heartbeats
	// over the interval.
	wheel *netpump.Wheel[*liveConn]

	workers sync.WaitGroup
	blocked sync.WaitGroup
	bufs    netpump.WriterPool
}

// connState says who may touch a liveConn's connection and stream.
type connState uint8

const (
	idle    connState = iota // nobody: waiting for events
	queued                   // in pump.ready
	running                  // a worker, or a blocked write, owns it
	rerun                    // running, and woken again since it started
	gone                     // closed
)

// liveConn is one stream in the pump's care.
type liveConn struct {
	adm       *stream.Admitted
	nc        net.Conn
	raw       syscall.RawConn // nc's descriptor, for writes that must not wait; nil if it has none
	unwatch   func()
	blockedOn bool // a blocked write owns the connection; guarded by pump.mu

	// guarded by pump.mu
	state  connState
	hungUp bool
	ping   bool
	slot   int
}

func newPump(log *slog.Logger, heartbeat, timeout time.Duration) (*pump, error) {
	h, err := netpump.NewPoller()
	if err != nil {
		return nil, fmt.Errorf("watch stream connections for hang-ups: %w", err)
	}
	p := &pump{
		log: log, heartbeat: heartbeat, timeout: timeout, hangups: h,
		drained: make(chan struct{}),
		wheel:   netpump.NewWheel[*liveConn](),
	}
	p.work = sync.NewCond(&p.mu)
	return p, nil
}

// run serves until ctx is done, then ends every stream with a shutdown
// notice and returns when all are closed.
func (p *pump) run(ctx context.Context) {
	go p.hangups.Run()
	n := 2 * runtime.GOMAXPROCS(0)
	p.workers.Add(n)
	for range n {
		go p.worker()
	}
	// Every stream gets a ping each interval, events or not, but a slot at a
	// time: pinging every stream at once would put thousands of writes in
	// front of the next event.
	tick := time.NewTicker(netpump.Tick(p.heartbeat))
	defer tick.Stop()
	for slot := 0; ; slot = (slot + 1) % netpump.WheelSlots {
		select {
		case <-ctx.Done():
			p.stop()
			return
		case <-tick.C:
			p.mu.Lock()
			for c := range p.wheel.Slot(slot) {
				c.ping = true
				p.wakeLocked(c)
			}
			p.mu.Unlock()
		}
	}
}

// stop ends every stream and waits for the workers and blocked writes.
func (p *pump) stop() {
	p.mu.Lock()
	p.stopping = true
	for slot := range netpump.WheelSlots {
		for c := range p.wheel.Slot(slot) {
			p.wakeLocked(c)
			if c.blockedOn {
				// End the blocked write now; it then closes the stream.
				_ = c.nc.SetWriteDeadline(time.Now())
			}
		}
	}
	empty := p.wheel.Len() == 0
	p.mu.Unlock()
	if !empty {
		<-p.drained
	}
	p.mu.Lock()
	p.quit = true
	p.work.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
	p.blocked.Wait()
	p.hangups.Close()
}

// add takes over c, already past its replay. It returns false if the pump is
// stopping; the caller then still owns c.
func (p *pump) add(c *liveConn) bool {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		return false
	}
	c.state = running // until the first notification below
	c.slot = p.wheel.Add(c)
	p.mu.Unlock()

	unwatch, err := p.hangups.Watch(c.nc, netpump.HangUp, func() {
		p.mu.Lock()
		c.hungUp = true
		p.wakeLocked(c)
		p.mu.Unlock()
	})
	if err != nil {
		// Without a watch a closed client is noticed at the next heartbeat.
		p.log.Warn("watch stream connection", "user", c.adm.Request.Subscriber, "err", err)
		unwatch = func() {}
	}
	c.unwatch = unwatch
	c.adm.Notify(func() { p.wake(c) })
	// Events queued during the replay arrived before Notify was set.
	p.finished(c)
	p.wake(c)
	return true
}

func (p *pump) wake(c *liveConn) {
	p.mu.Lock()
	p.wakeLocked(c)
	p.mu.Unlock()
}

func (p *pump) wakeLocked(c *liveConn) {
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
func (p *pump) finished(c *liveConn) {
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

// turn is what a worker learned about a stream when it took it.
type turn struct {
	hungUp, ping, stopping bool
}

func (p *pump) next() (*liveConn, turn) {
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
	t := turn{hungUp: c.hungUp, ping: c.ping, stopping: p.stopping}
	c.ping = false
	return c, t
}

func (p *pump) worker() {
	defer p.workers.Done()
	for {
		c, t := p.next()
		if c == nil {
			return
		}
		p.serve(c, t)
	}
}

// serve writes what c has to send, or closes it.
func (p *pump) serve(c *liveConn, t turn) {
	if t.hungUp {
		p.close(c, stream.ErrClientGone, false)
		return
	}
	err := c.adm.Err()
	if err == nil && t.stopping {
		err = hub.ErrShutdown
	}
	if err != nil {
		p.close(c, err, true)
		return
	}
	w := p.bufs.Get(c.raw)
	err = c.adm.Deliver(frameSink[liveWriter]{liveWriter{w}})
	if err == nil && t.ping {
		err = w.Frame(pingFrame)
	}
	if err == nil {
		err = w.Flush()
	}
	switch {
	case w.Err() != nil:
		p.bufs.Put(w)
		p.close(c, stream.ErrClientGone, false)
		return
	case err != nil:
		// The hub ended the stream during Deliver. Its notice can follow
		// only whole frames, so not what a stalled socket cut short.
		p.bufs.Put(w)
		p.close(c, err, !w.Blocked())
		return
	case !w.Blocked():
		p.bufs.Put(w)
		p.finished(c)
		return
	}
	// The client's socket buffer is full: wait for it, up to the write
	// timeout, without holding up a worker.
	p.mu.Lock()
	c.blockedOn = true
	stopping := p.stopping
	p.mu.Unlock()
	if stopping {
		p.bufs.Put(w)
		p.close(c, hub.ErrShutdown, false)
		return
	}
	p.blocked.Add(1)
	go p.writeBlocked(c, w)
}

// writeBlocked writes what the socket did not take at once, waiting for the
// client up to the write timeout, or until the hub ends the stream: a client
// cut off as too slow lets go of its frames at once, not at the timeout.
func (p *pump) writeBlocked(c *liveConn, w *netpump.Writer) {
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
		// stop may have cut the deadline short before the line above.
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
			p.close(c, hub.ErrShutdown, false)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Timed out, or cut short because the hub ended the stream:
			// Classify says which.
			p.close(c, c.adm.Classify(err), false)
		default:
			p.close(c, stream.ErrClientGone, false)
		}
		return
	}
	p.finished(c)
}

// close ends c for err, first telling the client why if notify and the
// socket takes the notice at once. The caller owns c.
func (p *pump) close(c *liveConn, err error, notify bool) {
	if n := notice(stream.Ending(err)); notify && n != nil {
		_, _ = netpump.WriteNow(c.raw, n)
	}
	if c.unwatch != nil {
		c.unwatch()
	}
	p.end(c, err)
}

// closeUnowned ends a stream that never reached the pump (its replay failed
// or the pump is stopping); nothing else writes to it, so the notice may wait
// a moment for the socket.
func (p *pump) closeUnowned(c *liveConn, err error, notify bool) {
	if n := notice(stream.Ending(err)); notify && n != nil {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.nc.Write(n)
	}
	p.end(c, err)
}

func (p *pump) end(c *liveConn, err error) {
	_ = c.nc.Close()
	c.adm.End(err)
	p.mu.Lock()
	defer p.mu.Unlock()
	c.state = gone
	p.wheel.Remove(c, c.slot)
	if p.stopping && p.wheel.Len() == 0 {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

// liveWriter is the pump's writer as a frameWriter.
type liveWriter struct{ w *netpump.Writer }

func (l liveWriter) write(b []byte) error { return l.w.Frame(b) }

func (l liveWriter) flush() error { return l.w.Flush() }
