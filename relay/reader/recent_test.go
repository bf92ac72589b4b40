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
	g := rigWithSixEvents(t)
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
	g.runWith(t, window, 2)

	g.announce(t, 0, []eventlog.Event{event(1), event(2)}, 2) // published from the announcement
	g.announce(t, 2, nil, 6)                                  // read from the log, two at a time
	eventually(t, "events 1..6 published", func() bool { return len(g.hub.ids()) == 6 })

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	got, covered, ok := held(window, id(0), id(6))
	if !ok || covered != id(6) || !slices.Equal(got, ids(1, 2, 3, 4, 5, 6)) {
		t.Errorf("window after 0: %v up to %v (%v), want events 1..6", got, covered, ok)
	}
}

func TestAnAnnouncementAheadOfTheHubLeavesTheReplayWindowWhole(t *testing.T) {
	window := replay.New(1 << 20)
	g := rigWithSixEvents(t)
	g.runWith(t, window, 10)

	g.announce(t, 0, []eventlog.Event{event(1), event(2)}, 2) // published from the announcement
	// Events 3 and 4 were announced without their rows (too large, or the
	// notification was lost): the next announcement starts past the hub,
	// which reads 3..6 from the log.
	g.announce(t, 4, []eventlog.Event{event(5), event(6)}, 6)
	eventually(t, "events 1..6 published", func() bool { return len(g.hub.ids()) == 6 })

	got, covered, ok := held(window, id(0), id(6))
	if !ok || covered != id(6) || !slices.Equal(got, ids(1, 2, 3, 4, 5, 6)) {
		t.Errorf("window after 0: %v up to %v (%v), want events 1..6", got, covered, ok)
	}
	if n := window.Stats().Restarts; n != 0 {
		t.Errorf("window started over %d times, want 0: it lost what it held", n)
	}
}

// rigWithSixEvents returns a rig whose log holds events 1..6, all settled,
// and whose hub has published none.
func rigWithSixEvents(t *testing.T) *rig {
	g := &rig{hub: &fakeHub{position: id(0)}, log: &fakeLog{horizon: id(7)}, key: newKey(t)}
	for i := int64(1); i <= 6; i++ {
		g.log.events = append(g.log.events, event(i))
	}
	return g
}

// runWith runs g's reader, recording into window and reading the log batch
// events at a time, until the test ends.
func (g *rig) runWith(t *testing.T, window *replay.Window, batch int) {
	g.r = reader.New(reader.Config{Channel: channel, SafetyPoll: time.Hour, Batch: batch, Recent: window}, g.hub, g.log, g.key,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// held returns the ids of the events window holds in (after, upto].
func held(window *replay.Window, after, upto eventlog.ID) ([]eventlog.ID, eventlog.ID, bool) {
	msgs, covered, ok := window.Read(after, upto, 100, 0)
	var got []eventlog.ID
	for _, m := range msgs {
		got = append(got, m.ID)
	}
	return got, covered, ok
}
