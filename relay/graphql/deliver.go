package graphql

import (
	"context"
	"errors"

	"github.com/pgrelay/pgrelay/relay/stream"
)

// A subscription holds no goroutine while it waits for events. Its replay
// runs on a goroutine of its own (it reads the log, which may take a
// while); once the replay is written the subscription is live, and the hub
// tells the connection when it has events or ends (stream.Notify). The
// connection then runs one deliverer goroutine, which writes every live
// subscription's events and exits when there is nothing more to write.

// op is one subscription of a connection.
type op struct {
	id     string
	adm    *stream.Admitted
	sink   *sink
	cancel context.CancelFunc // stops the replay

	// guarded by conn.mu
	live    bool // the replay is written: the deliverer serves it
	stopped bool // the client stopped it
	ended   bool
}

// start serves a subscription admitted for the client: its replay now,
// live events from then on.
func (c *conn) start(o *op) {
	ctx, cancel := context.WithCancel(c.ctx)
	o.cancel = cancel
	c.mu.Lock()
	c.ops[o.id] = o
	c.wg.Add(1)
	c.mu.Unlock()
	o.adm.Notify(c.wake)
	go c.replay(ctx, o)
}

func (c *conn) replay(ctx context.Context, o *op) {
	defer c.wg.Done()
	if err := o.adm.Classify(o.adm.Replay(ctx, o.sink)); err != nil {
		c.endOp(o, err, ctx.Err() == nil)
		return
	}
	c.mu.Lock()
	stopped := o.stopped
	o.live = !stopped
	c.mu.Unlock()
	if stopped { // while the replay ran: stop left it to the replay
		c.endOp(o, stream.ErrClientGone, false)
		return
	}
	c.wake() // for what the hub queued meanwhile
}

// wake makes the deliverer run, starting it if it is not running.
func (c *conn) wake() {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return
	}
	c.dirty = true
	if c.delivering {
		c.mu.Unlock()
		return
	}
	c.delivering = true
	c.wg.Add(1)
	c.mu.Unlock()
	go c.deliver()
}

// deliver writes the live subscriptions' events until none is left, and
// ends the subscriptions the client stopped or the hub ended.
func (c *conn) deliver() {
	defer c.wg.Done()
	var live []*op
	for {
		c.mu.Lock()
		if !c.dirty {
			c.delivering = false
			c.mu.Unlock()
			return
		}
		c.dirty = false
		live = live[:0]
		for _, o := range c.ops {
			if o.live && !o.ended {
				live = append(live, o)
			}
		}
		for _, o := range c.stoppedOps {
			live = append(live, o)
		}
		c.stoppedOps = c.stoppedOps[:0]
		c.mu.Unlock()
		for _, o := range live {
			c.mu.Lock()
			stopped := o.stopped
			c.mu.Unlock()
			switch err := o.adm.Err(); {
			case stopped:
				c.endOp(o, stream.ErrClientGone, false)
			case err != nil:
				c.endOp(o, err, true)
			default:
				if err := o.adm.Deliver(o.sink); err != nil {
					c.endOp(o, o.adm.Classify(err), true)
				}
			}
		}
		if err := c.flush(); err != nil && !errors.Is(err, errClosing) {
			c.writeFailed(err)
		}
	}
}

// stop ends a subscription at the client's request. Its id is free at
// once; the replay or the deliverer ends its stream.
func (c *conn) stop(id string) {
	c.mu.Lock()
	o := c.ops[id]
	delete(c.ops, id)
	if o != nil {
		o.stopped = true
		if o.live {
			c.stoppedOps = append(c.stoppedOps, o)
		}
	}
	c.mu.Unlock()
	if o != nil {
		o.cancel()
		c.wake()
	}
}

// endOp ends a subscription's stream, once. ended says the hub or a write
// ended it (not the client, not the connection's end): the connection then
// ends too, with the code that says why.
func (c *conn) endOp(o *op, err error, ended bool) {
	c.mu.Lock()
	if o.ended {
		c.mu.Unlock()
		return
	}
	o.ended = true
	if c.ops[o.id] == o {
		delete(c.ops, o.id)
	}
	connErr := c.endErr
	c.mu.Unlock()
	o.cancel()
	if errors.Is(err, context.Canceled) || errors.Is(err, errClosing) {
		// The client stopped it, or the connection ended first: then
		// the connection's reason is the stream's.
		ended = false
		err = connErr
		if err == nil {
			err = stream.ErrClientGone
		}
	}
	c.h.shapes.release(o.sink.shape)
	o.adm.End(err)
	if ended {
		c.endFor(err)
	}
}

// endOps ends what is left of the subscriptions once the connection is
// over and no goroutine serves them.
func (c *conn) endOps() {
	c.mu.Lock()
	var left []*op
	for _, o := range c.ops {
		left = append(left, o)
	}
	left = append(left, c.stoppedOps...)
	c.stoppedOps = nil
	c.mu.Unlock()
	for _, o := range left {
		c.endOp(o, context.Canceled, false)
	}
}
