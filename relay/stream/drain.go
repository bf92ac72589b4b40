package stream

import (
	"context"
	"fmt"
	"sync"
)

// Drain counts connections a transport has taken over from net/http, whose
// Shutdown does not track hijacked connections, so that a relay shutting
// down can wait for their closing. Not a WaitGroup: connections may still
// arrive while Wait waits. The zero value is ready.
type Drain struct {
	mu      sync.Mutex
	open    int
	drained chan struct{} // closed when open drops to zero, if someone waits
}

// Add counts one more connection.
func (d *Drain) Add() {
	d.mu.Lock()
	d.open++
	d.mu.Unlock()
}

// Done counts one connection closed.
func (d *Drain) Done() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open--
	if d.open == 0 && d.drained != nil {
		close(d.drained)
		d.drained = nil
	}
}

// Wait blocks until no connection is open, or ctx is done; what names the
// connections in the error.
func (d *Drain) Wait(ctx context.Context, what string) error {
	d.mu.Lock()
	if d.open == 0 {
		d.mu.Unlock()
		return nil
	}
	if d.drained == nil {
		d.drained = make(chan struct{})
	}
	drained := d.drained
	d.mu.Unlock()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to close: %w", what, ctx.Err())
	}
}
