package relaybench

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

func TestAReopenWaitsAtLeastTheRetryAfterOfARefusalAndBacksOffOtherwise(t *testing.T) {
	t.Parallel()
	r := &Reconnect{Retry: time.Second}
	now := time.Now()
	busy := &streamclient.RejectedError{Status: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {"3"}}}
	gone := errors.New("connect: connection refused")
	for range 100 {
		if d := r.retryDelay(busy, 1, now); d < 3*time.Second || d > 3*time.Second+time.Second {
			t.Fatalf("after a 503 with Retry-After 3: waited %s, want 3s to 4s", d)
		}
		if d := r.retryDelay(gone, 1, now); d < 250*time.Millisecond || d > 1250*time.Millisecond {
			t.Fatalf("after a first failure without Retry-After: waited %s, want 0.25s to 1.25s", d)
		}
		if d := r.retryDelay(gone, 3, now); d < time.Second || d > 5*time.Second {
			t.Fatalf("after a third failure in a row: waited %s, want 1s to 5s (doubled twice)", d)
		}
		if d := r.retryDelay(gone, 50, now); d > 10*time.Second {
			t.Fatalf("after 50 failures in a row: waited %s, want at most 10s", d)
		}
	}
}
