// Package ctxtime holds the one wait every long-running loop of the relay
// and its tools needs: a pause that ends early when the work is cancelled.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits for d, or until ctx is done, and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
