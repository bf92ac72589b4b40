package stream

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/match"
	"github.com/pgrelay/pgrelay/relay/replay"
)

func at(seq int64) eventlog.ID { return eventlog.ID{Xid: 100, Seq: seq} }

// stallingSink records the events written to it; the first write runs
// during and then waits for longer than a replay's filter may be old.
type stallingSink struct {
	during func()
	got    []int64
}

func (s *stallingSink) Event(m *hub.Message) error {
	if s.during != nil {
		s.during()
		s.during = nil
		time.Sleep(2 * replayRecheck)
	}
	s.got = append(s.got, m.ID.Seq)
	return nil
}
func (s *stallingSink) Reset(eventlog.ID) error { return nil }
func (s *stallingSink) Heartbeat() error        { return nil }
func (s *stallingSink) Flush() error            { return nil }

// A replay from the window is handed the events its keys select; it must
// not move past the others with keys that went stale while it waited on its
// client, or a key added meanwhile would miss events it should get.
func TestAReplayFromTheWindowMovesPastLeftOutEventsOnlyWithFreshKeys(t *testing.T) {
	window := replay.New(1 << 20)
	events := []eventlog.Event{
		{ID: at(1), Topic: "templates", Payload: []byte(`{"n":1}`), Audience: []string{"loc-a"}},
		{ID: at(2), Topic: "templates", Payload: []byte(`{"n":2}`), Audience: []string{"loc-b"}},
		{ID: at(3), Topic: "templates", Payload: []byte(`{"n":3}`), Audience: []string{"loc-b"}},
	}
	window.Record(at(0), events)
	h := hub.New(1024, 0)
	h.Start(at(3))
	sub, err := h.Subscribe("zewi", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	activeFrom, err := h.Activate(sub, h.NextGeneration(), filter.Filter{Exists: true, Keys: match.Keys{"templates": {"loc-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	o := &Opener{Hub: h, Recent: window, CatchupBatch: 100, Heartbeat: time.Minute,
		Horizons: replay.NewHorizons(func(context.Context) (eventlog.ID, error) { return at(0), nil })}
	after := at(0)
	st := &Stream{o: o, req: Request{Subscriber: "zewi", After: &after}, sub: sub, activeFrom: activeFrom}

	// While the first event is being written, the subscriber gains loc-b.
	sink := &stallingSink{during: func() {
		h.ApplyFilters(h.NextGeneration(), map[string]filter.Filter{"zewi": {Exists: true, Keys: match.Keys{"templates": {"loc-a", "loc-b"}}}})
	}}
	if err := st.Replay(context.Background(), sink); err != nil {
		t.Fatal(err)
	}
	if want := []int64{1, 2, 3}; !slices.Equal(sink.got, want) {
		t.Fatalf("replayed %v, want %v: the events for loc-b came after the key was added", sink.got, want)
	}
}
