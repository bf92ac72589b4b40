package replay

import (
	"context"
	"errors"
	"sync"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// Horizons reads the log's retention horizon for replays served from a
// Window, one query for however many streams ask at once.
//
// A stream resuming from a pruned position must be told to reset, so a
// replay from memory still needs the horizon, and one read before the
// stream asked could miss a prune: Fresh returns a value read by a query
// that began after it was called. Callers that arrive while a read is under
// way join the next one, so a storm of resuming streams costs about one
// query per query's duration, not one per stream.
type Horizons struct {
	// Read reads the horizon (eventlog.Horizon on the relay's pool).
	Read func(ctx context.Context) (eventlog.ID, error)

	mu sync.Mutex
	// next is the read that callers arriving now will share; it has not
	// begun. nil until one arrives.
	next *horizonRead
	// turn is held by the caller running a read.
	turn chan struct{}
}

type horizonRead struct {
	done chan struct{}
	id   eventlog.ID
	err  error
}

// NewHorizons returns Horizons reading through read.
func NewHorizons(read func(ctx context.Context) (eventlog.ID, error)) *Horizons {
	return &Horizons{Read: read, turn: make(chan struct{}, 1)}
}

// Fresh returns the horizon as a read begun after the call found it.
func (h *Horizons) Fresh(ctx context.Context) (eventlog.ID, error) {
	for {
		r := h.join()
		select {
		case h.turn <- struct{}{}:
			h.run(ctx, r)
			<-h.turn
		case <-r.done:
		case <-ctx.Done():
			return eventlog.ID{}, ctx.Err()
		}
		select {
		case <-r.done:
		case <-ctx.Done():
			return eventlog.ID{}, ctx.Err()
		}
		// A read run for another caller ends with that caller's context:
		// not a reason to fail this one, which asks again.
		if r.err != nil && isContextErr(r.err) && ctx.Err() == nil {
			continue
		}
		return r.id, r.err
	}
}

// join returns the read not yet begun, making one if there is none.
func (h *Horizons) join() *horizonRead {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.next == nil {
		h.next = &horizonRead{done: make(chan struct{})}
	}
	return h.next
}

// run performs r if nobody has begun it yet; the caller holds the turn.
func (h *Horizons) run(ctx context.Context, r *horizonRead) {
	h.mu.Lock()
	mine := h.next == r
	if mine {
		h.next = nil // later callers need a read begun after them
	}
	h.mu.Unlock()
	if !mine {
		return
	}
	r.id, r.err = h.Read(ctx)
	close(r.done)
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
