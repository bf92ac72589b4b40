package ctxtime

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSleepWaitsItsDurationUnlessCancelledFirst(t *testing.T) {
	start := time.Now()
	if err := Sleep(context.Background(), 20*time.Millisecond); err != nil || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("Sleep returned %v after %v, want nil after 20ms", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start = time.Now()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Fatalf("Sleep on a cancelled context returned %v after %v, want context.Canceled at once", err, time.Since(start))
	}
}
