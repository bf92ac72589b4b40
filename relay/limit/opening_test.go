package limit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/limit"
)

// acquireAsync starts an Acquire and returns where its outcome arrives.
func acquireAsync(ctx context.Context, o *limit.Opening) <-chan error {
	done := make(chan error, 1)
	go func() {
		release, err := o.Acquire(ctx)
		if err == nil {
			defer release()
			<-ctx.Done()
		}
		done <- err
	}()
	return done
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOpeningRefusesAtOnceBeyondItsBoundAndAdmitsWaitersAsTurnsFreeUp(t *testing.T) {
	t.Parallel()
	o := limit.NewOpening(1, 2, time.Minute)
	first, err := o.Acquire(context.Background())
	if err != nil {
		t.Fatalf("first open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter := acquireAsync(ctx, o)
	waitFor(t, "the second open to wait", func() bool { return o.Waiting() == 1 })

	start := time.Now()
	if _, err := o.Acquire(context.Background()); !errors.Is(err, limit.ErrBusy) {
		t.Fatalf("third open with one working and one waiting: got %v, want ErrBusy", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %s: it must not wait", d)
	}
	if o.Working() != 1 || o.Waiting() != 1 {
		t.Errorf("after the refusal: %d working, %d waiting, want 1 and 1", o.Working(), o.Waiting())
	}

	first()
	first() // a second release must not free a second turn
	waitFor(t, "the waiter to get its turn", func() bool { return o.Working() == 1 && o.Waiting() == 0 })
	select {
	case err := <-waiter:
		t.Fatalf("the waiter ended before its context: %v", err)
	default:
	}
	cancel()
	if err := <-waiter; err != nil {
		t.Fatalf("the waiter's open: %v", err)
	}
	waitFor(t, "every turn given back", func() bool { return o.Working() == 0 && o.Waiting() == 0 })
}

func TestOpeningWaiterGivesUpWithErrBusyAfterItsWaitOrWithItsContext(t *testing.T) {
	t.Parallel()
	o := limit.NewOpening(1, 0, 50*time.Millisecond)
	release, err := o.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	start := time.Now()
	if _, err := o.Acquire(context.Background()); !errors.Is(err, limit.ErrBusy) {
		t.Fatalf("a waiter whose turn did not come: got %v, want ErrBusy", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("gave up after %s, before its wait of 50ms", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	long := limit.NewOpening(1, 0, time.Hour)
	hold, err := long.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	if _, err := long.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("a waiter whose client left: got %v, want context.Canceled", err)
	}
	if n := long.Waiting(); n != 0 {
		t.Errorf("%d still counted as waiting after giving up", n)
	}
}

func TestOpeningRetryAfterIsSpreadOverWholeSecondsFromOne(t *testing.T) {
	t.Parallel()
	var o *limit.Opening
	seen := map[time.Duration]bool{}
	for range 200 {
		d := o.RetryAfter().Truncate(time.Second)
		if d < time.Second || d > time.Second+limit.RetryAfterSpread {
			t.Fatalf("RetryAfter %s outside [1s, %s]", d, time.Second+limit.RetryAfterSpread)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Errorf("200 suggestions all %v: want them spread", seen)
	}
}

func TestOpensWithoutATurnCountTowardTheBoundButNeverWaitForATurn(t *testing.T) {
	o := limit.NewOpening(1, 3, time.Hour)
	replaying, err := o.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The one turn is taken: opens that need none still go ahead at once.
	fresh1, err := o.Enter()
	if err != nil {
		t.Fatalf("first fresh open: %v", err)
	}
	fresh2, err := o.Enter()
	if err != nil {
		t.Fatalf("second fresh open: %v", err)
	}
	if o.Working() != 3 || o.Waiting() != 0 {
		t.Errorf("working %d, waiting %d; want 3 and 0", o.Working(), o.Waiting())
	}
	if _, err := o.Enter(); !errors.Is(err, limit.ErrBusy) {
		t.Errorf("a fourth open beyond the bound of 3: %v, want ErrBusy", err)
	}
	fresh1()
	fresh1() // extra calls are ignored
	if o.Working() != 2 {
		t.Errorf("after one fresh open ended: working %d, want 2", o.Working())
	}
	fresh2()
	replaying()
	if o.Working() != 0 || o.Waiting() != 0 {
		t.Errorf("after all ended: working %d, waiting %d; want 0 and 0", o.Working(), o.Waiting())
	}
}
