package reader_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/reader"
	"github.com/pgrelay/pgrelay/relay/replay"
)

func TestEveryRunTheReaderPublishesIsInTheReplayWindowBeforeTheHubHasIt(t *testing.T) {
	window := replay.New(1 << 20)
	var mu sync.Mutex
	var problems []string
	g := &rig{hub: &fakeHub{position: id(0)}, log: &fakeLog{horizon: id(7)}, key: newKey(t)}
	for i := int64(1); i <= 6; i++ {
		g.log.events = append(g.log.events, event(i))
	}
	g.hub.before = func(position eventlog.ID, events []eventlog.Event) {
		// A stream going live at the position this run brings the hub
		// to must find everything up to it in the window.
		last := events[len(events)-1].ID
		if !position.Less(last) {
			return
		}
		if _, covered, ok := window.Read(position, last, 100, 0); !ok || covered != last {
			mu.Lock()
			problems = append(problems, "events up to "+last.String()+" published before the window held them")
			mu.Unlock()
		}
	}
	g.r = reader.New(reader.Config{Channel: channel, SafetyPoll: time.Hour, Batch: 2, Recent: window}, g.hub, g.log, g.key,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	g.announce(t, 0, []eventlog.Event{event(1), event(2)}, 2) // published from the announcement
	g.announce(t, 2, nil, 6)                                  // read from the log, two at a time
	eventually(t, "events 1..6 published", func() bool { return len(g.hub.ids()) == 6 })

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	msgs, covered, ok := window.Read(id(0), id(6), 100, 0)
	var got []eventlog.ID
	for _, m := range msgs {
		got = append(got, m.ID)
	}
	if !ok || covered != id(6) || !slices.Equal(got, ids(1, 2, 3, 4, 5, 6)) {
		t.Errorf("window after 0: %v up to %v (%v), want events 1..6", got, covered, ok)
	}
}

func TestAnAnnouncementAheadOfTheHubLeavesTheReplayWindowWhole(t *testing.T) {
	window := replay.New(1 << 20)
	g := &rig{hub: &fakeHub{position: id(0)}, log: &fakeLog{horizon: id(7)}, key: newKey(t)}
	for i := int64(1); i <= 6; i++ {
		g.log.events = append(g.log.events, event(i))
	}
	g.r = reader.New(reader.Config{Channel: channel, SafetyPoll: time.Hour, Batch: 10, Recent: window}, g.hub, g.log, g.key,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	g.announce(t, 0, []eventlog.Event{event(1), event(2)}, 2) // published from the announcement
	// Events 3 and 4 were announced without their rows (too large, or the
	// notification was lost): the next announcement starts past the hub,
	// which reads 3..6 from the log.
	g.announce(t, 4, []eventlog.Event{event(5), event(6)}, 6)
	eventually(t, "events 1..6 published", func() bool { return len(g.hub.ids()) == 6 })

	msgs, covered, ok := window.Read(id(0), id(6), 100, 0)
	var got []eventlog.ID
	for _, m := range msgs {
		got = append(got, m.ID)
	}
	if !ok || covered != id(6) || !slices.Equal(got, ids(1, 2, 3, 4, 5, 6)) {
		t.Errorf("window after 0: %v up to %v (%v), want events 1..6", got, covered, ok)
	}
	if n := window.Stats().Restarts; n != 0 {
		t.Errorf("window started over %d times, want 0: it lost what it held", n)
	}
}
