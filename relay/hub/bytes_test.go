package hub_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
)

// sized returns an event whose payload is n bytes long.
func sized(seq int64, n int, audience ...string) eventlog.Event {
	e := event(seq, audience...)
	e.Payload = []byte(`{"name":"` + strings.Repeat("x", n-11) + `"}`)
	return e
}

func TestAQueueOverItsByteBoundClosesTheSubscriptionAsASlowConsumer(t *testing.T) {
	// Room for many events by count, for two of these by size.
	h := hub.New(1024, 25_000)
	slow := open(t, h, "slow", "k")
	fast := open(t, h, "fast", "k")
	for i := int64(1); i <= 3; i++ {
		h.Publish([]eventlog.Event{sized(i, 10_000, "k")})
		if got := len(fast.Next()); got != 1 {
			t.Fatalf("fast reader got %d events after publish %d, want 1", got, i)
		}
		if i < 3 && slow.Err() != nil {
			t.Fatalf("slow subscription closed with %d bytes queued (%v), bound 25000", i*10_000, slow.Err())
		}
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("slow subscription still open with about 30000 bytes queued, bound 25000")
	}
	if !errors.Is(slow.Err(), hub.ErrSlowConsumer) {
		t.Fatalf("slow ended with %v, want ErrSlowConsumer", slow.Err())
	}
	if got := slow.Next(); len(got) != 0 {
		t.Fatalf("a closed subscription still holds %d events", len(got))
	}
	if fast.Err() != nil {
		t.Fatalf("fast subscription ended: %v", fast.Err())
	}
	if n := h.Stats().SlowConsumers; n != 1 {
		t.Fatalf("slow consumers = %d, want 1", n)
	}
}

func TestAnEventLargerThanTheByteBoundIsDeliveredToAReaderThatKeepsUp(t *testing.T) {
	h := hub.New(1024, 1_000)
	s := open(t, h, "a", "k")
	for i := int64(1); i <= 3; i++ {
		h.Publish([]eventlog.Event{sized(i, 50_000, "k")})
		got := s.Next()
		if s.Err() != nil || len(got) != 1 || len(got[0].Payload) != 50_000 {
			t.Fatalf("event %d of 50000 bytes, bound 1000: got %d events, err %v; want it delivered alone", i, len(got), s.Err())
		}
	}
	// Behind such an event, the next one is over the bound.
	h.Publish([]eventlog.Event{sized(4, 50_000, "k"), sized(5, 20, "k")})
	if !errors.Is(s.Err(), hub.ErrSlowConsumer) {
		t.Fatalf("second event queued behind one over the bound: err %v, want ErrSlowConsumer", s.Err())
	}
}

func TestTakingTheQueueFreesItsBytes(t *testing.T) {
	h := hub.New(1024, 25_000)
	s := open(t, h, "a", "k")
	for i := int64(1); i <= 20; i += 2 {
		h.Publish([]eventlog.Event{sized(i, 10_000, "k"), sized(i+1, 10_000, "k")})
		if got := len(s.Next()); got != 2 || s.Err() != nil {
			t.Fatalf("round %d: got %d events, err %v; want 2 and the subscription open", i/2, got, s.Err())
		}
	}
}
