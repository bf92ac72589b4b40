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
	sched     *netpump.Scheduler[*liveConn]

	// wheel holds every stream in the pump and spreads their heartbeats
	// over the interval; mu guards it.
	mu    sync.Mutex
	wheel *netpump.Wheel[*liveConn]

	blocked sync.WaitGroup
	bufs    netpump.WriterPool
}

// Why a stream was woken, besides events to write (no flag).
const (
	hungUp  netpump.Flags = 1 << iota // the client closed its connection
	pingDue                           // its heartbeat is due
)

// liveConn is one stream in the pump's care. Whoever holds it (see
// netpump.Scheduler) owns its connection.
type liveConn struct {
	netpump.Task
	adm     *stream.Admitted
	nc      net.Conn
	raw     syscall.RawConn // nc's descriptor, for writes that must not wait; nil if it has none
	unwatch func()
	slot    int // in the wheel; guarded by pump.mu
}

func newPump(log *slog.Logger, heartbeat, timeout time.Duration) (*pump, error) {
	h, err := netpump.NewPoller()
	if err != nil {
		return nil, fmt.Errorf("watch stream connections for hang-ups: %w", err)
	}
	return &pump{
		log: log, heartbeat: heartbeat, timeout: timeout, hangups: h,
		sched: netpump.NewScheduler[*liveConn](),
		wheel: netpump.NewWheel[*liveConn](),
	}, nil
}

// run serves until ctx is done, then ends every stream with a shutdown
// notice and returns when all are closed.
func (p *pump) run(ctx context.Context) {
	go p.hangups.Run()
	p.sched.Start(2*runtime.GOMAXPROCS(0), func() func(*liveConn, netpump.Flags) { return p.serve })
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
				p.sched.Wake(c, pingDue)
			}
			p.mu.Unlock()
		}
	}
}

// stop ends every stream and waits for the workers and blocked writes.
// Blocked writes give up at once (the scheduler's Stopping).
func (p *pump) stop() {
	drained := p.sched.Drain()
	p.mu.Lock()
	for slot := range netpump.WheelSlots {
		for c := range p.wheel.Slot(slot) {
			p.sched.Wake(c, 0)
		}
	}
	p.mu.Unlock()
	<-drained
	p.sched.Stop()
	p.blocked.Wait()
	p.hangups.Close()
}

// add takes over c, already past its replay. It returns false if the pump is
// stopping; the caller then still owns c.
func (p *pump) add(c *liveConn) bool {
	if !p.sched.Admit(c) {
		return false
	}
	p.mu.Lock()
	c.slot = p.wheel.Add(c)
	p.mu.Unlock()
	unwatch, err := p.hangups.Watch(c.nc, netpump.HangUp, func() { p.sched.Wake(c, hungUp) })
	if err != nil {
		// Without a watch a closed client is noticed at the next heartbeat.
		p.log.Warn("watch stream connection", "user", c.adm.Request.Subscriber, "err", err)
		unwatch = func() {}
	}
	c.unwatch = unwatch
	c.adm.Notify(func() { p.sched.Wake(c, 0) })
	// Events queued during the replay arrived before Notify was set: the
	// first turn delivers them.
	p.sched.Wake(c, 0)
	p.sched.Done(c)
	return true
}

// serve writes what c has to send, or closes it. It holds c.
func (p *pump) serve(c *liveConn, f netpump.Flags) {
	if f&hungUp != 0 {
		p.close(c, stream.ErrClientGone, false)
		return
	}
	err := c.adm.Err()
	if err == nil && p.sched.Draining() {
		err = hub.ErrShutdown
	}
	if err != nil {
		p.close(c, err, true)
		return
	}
	w := p.bufs.Get(c.raw)
	err = c.adm.Deliver(frameSink[liveWriter]{liveWriter{w}})
	if err == nil && f&pingDue != 0 {
		err = w.Frame(pingFrame)
	}
	if err == nil {
		err = w.Flush()
	}
	switch {
	case w.Err() != nil:
		p.bufs.Put(w)
		p.close(c, stream.ErrClientGone, false)
	case err != nil:
		// The hub ended the stream during Deliver. Its notice can follow
		// only whole frames, so not what a stalled socket cut short.
		p.bufs.Put(w)
		p.close(c, err, !w.Blocked())
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

// writeBlocked writes what the socket did not take at once, then hands c
// back, or closes it if the write failed.
func (p *pump) writeBlocked(c *liveConn, w *netpump.Writer) {
	defer p.blocked.Done()
	err := w.WriteRest(c.nc, p.timeout, c.adm.Done(), p.sched.Stopping())
	p.bufs.Put(w)
	switch {
	case err == nil:
		p.sched.Done(c)
	case p.sched.Draining():
		p.close(c, hub.ErrShutdown, false)
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Timed out, or cut short because the hub ended the stream:
		// Classify says which.
		p.close(c, c.adm.Classify(err), false)
	default:
		p.close(c, stream.ErrClientGone, false)
	}
}

// close ends c for err, first telling the client why if notify and the
// socket takes the notice at once. The caller holds c.
func (p *pump) close(c *liveConn, err error, notify bool) {
	if n := notice(stream.Ending(err)); notify && n != nil {
		_, _ = netpump.WriteNow(c.raw, n)
	}
	if c.unwatch != nil {
		c.unwatch()
	}
	_ = c.nc.Close()
	c.adm.End(err)
	p.mu.Lock()
	p.wheel.Remove(c, c.slot)
	p.mu.Unlock()
	p.sched.Drop(c)
}

// closeUnowned ends a stream that never reached the pump (its replay failed
// or the pump is stopping); nothing else writes to it, so the notice may wait
// a moment for the socket.
func (p *pump) closeUnowned(c *liveConn, err error, notify bool) {
	if n := notice(stream.Ending(err)); notify && n != nil {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.nc.Write(n)
	}
	_ = c.nc.Close()
	c.adm.End(err)
}

// liveWriter is the pump's writer as a frameWriter.
type liveWriter struct{ w *netpump.Writer }

func (l liveWriter) write(b []byte) error { return l.w.Frame(b) }

func (l liveWriter) flush() error { return l.w.Flush() }
