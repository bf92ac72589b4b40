package stream

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestADrainWaitsForItsLastConnectionAndNoLongerThanItsContext(t *testing.T) {
	var d Drain
	if err := d.Wait(context.Background(), "nothing"); err != nil {
		t.Fatalf("Wait with no connection open: %v", err)
	}
	d.Add()
	d.Add()
	done := make(chan error, 1)
	go func() { done <- d.Wait(context.Background(), "streams") }()
	d.Done()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v with a connection still open", err)
	case <-time.After(50 * time.Millisecond):
	}
	d.Done()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait after the last connection closed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after the last connection closed")
	}
	d.Add()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := d.Wait(ctx, "streams"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past its deadline = %v, want DeadlineExceeded", err)
	}
}
