package hub

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/pgrelay/pgrelay/internal/cputime"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/match"
)

// templateRow is the payload of a typical templates event, as the capture
// trigger writes it (jsonb's text form).
const templateRow = `{"id": "0b5c2f7e-5d8f-4a53-9a3e-2f1d7b6c9e01", "name": "Q3 menu", "created_at": "2025-06-01T12:00:00.123456+00:00", "created_by": "user-5", "share_location_ids": ["loc-1", "loc-2"]}`

func benchEvent(i int, audience []string) eventlog.Event {
	return eventlog.Event{
		ID:       eventlog.ID{Xid: int64(1000 + i), Seq: int64(i + 1)},
		Topic:    "templates",
		Payload:  []byte(templateRow),
		Audience: audience,
		Actor:    "producer",
	}
}

// BenchmarkMessageSSE measures encoding one event as an SSE frame (done once
// per event, shared by every recipient).
func BenchmarkMessageSSE(b *testing.B) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if m := NewMessage(benchEvent(i, nil)); len(m.SSE()) == 0 {
			b.Fatal("empty frame")
		}
	}
}

// BenchmarkMessageWS measures encoding one event as a WebSocket message.
func BenchmarkMessageWS(b *testing.B) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if m := NewMessage(benchEvent(i, nil)); len(m.WS()) == 0 {
			b.Fatal("empty message")
		}
	}
}

// BenchmarkPublish measures fanning one event out to every one of N
// subscriptions (a broadcast): matching, queueing and signalling each
// recipient, and each recipient taking its queue. ns/op is per event.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 100, 10_000} {
		b.Run(fmt.Sprintf("recipients=%d", n), func(b *testing.B) {
			const drainEvery = 64
			h := New(drainEvery*2, 0)
			subs := make([]*Subscription, n)
			for i := range subs {
				s, err := h.Subscribe("user-"+strconv.Itoa(i), nil)
				if err != nil {
					b.Fatal(err)
				}
				f := filter.Filter{Exists: true, Keys: match.Keys{"templates": {"location:1"}}}
				if _, err := h.Activate(s, h.NextGeneration(), f); err != nil {
					b.Fatal(err)
				}
				subs[i] = s
			}
			audience := []string{"location:1", "org:1"}
			batch := make([]eventlog.Event, 1)
			received := 0
			b.ReportAllocs()
			cpu := cputime.Start()
			for i := 0; b.Loop(); i++ {
				batch[0] = benchEvent(i, audience)
				h.Publish(batch)
				if i%drainEvery == drainEvery-1 {
					for _, s := range subs {
						received += len(s.Next())
					}
				}
			}
			for _, s := range subs {
				received += len(s.Next())
			}
			if want := b.N * n; received != want {
				b.Fatalf("received %d deliveries, want %d (slow consumers: %d)", received, want, h.Stats().SlowConsumers)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(received), "ns/delivery")
			b.ReportMetric(cpu.Per(b.N), "cpu-ns/op")
		})
	}
}
