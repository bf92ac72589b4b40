package hub_test

import (
	"errors"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/match"
)

func event(seq int64, audience ...string) eventlog.Event {
	return eventlog.Event{
		ID: eventlog.ID{Xid: 100, Seq: seq}, Topic: "templates",
		Payload: []byte(`{"n":1}`), Audience: audience, Actor: "creator",
	}
}

func open(t *testing.T, h *hub.Hub, sub string, keys ...string) *hub.Subscription {
	t.Helper()
	s, err := h.Subscribe(sub, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Activate(s, h.NextGeneration(), filter.Filter{Exists: true, Keys: match.Keys{"templates": keys}}); err != nil {
		t.Fatal(err)
	}
	return s
}

func ids(msgs []*hub.Message) []int64 {
	var out []int64
	for _, m := range msgs {
		out = append(out, m.ID.Seq)
	}
	return out
}

func TestPublishQueuesOneSharedMessagePerRecipient(t *testing.T) {
	h := hub.New(10, 0)
	a := open(t, h, "a", "location:1")
	b := open(t, h, "b", "location:1")
	c := open(t, h, "c", "location:2")
	h.Publish([]eventlog.Event{event(1, "location:1")})
	ma, mb := a.Next(), b.Next()
	if len(ma) != 1 || len(mb) != 1 || ma[0] != mb[0] {
		t.Fatalf("want one shared message for a and b, got %d and %d", len(ma), len(mb))
	}
	if got := c.Next(); len(got) != 0 {
		t.Fatalf("c received %d events for a key it does not listen to", len(got))
	}
	if want := "id: 0000000000000064-0000000000000001\nevent: templates\ndata: {\"n\":1}\n\n"; string(ma[0].SSE()) != want {
		t.Fatalf("SSE frame %q, want %q", ma[0].SSE(), want)
	}
	if want := `{"id":"0000000000000064-0000000000000001","topic":"templates","data":{"n":1}}`; string(ma[0].WS()) != want {
		t.Fatalf("WS message %q, want %q", ma[0].WS(), want)
	}
}

func TestEventsAtOrBeforeThePositionAreNotPublishedAgain(t *testing.T) {
	h := hub.New(10, 0)
	a := open(t, h, "a", "k")
	h.Publish([]eventlog.Event{event(1, "k"), event(2, "k")})
	h.Publish([]eventlog.Event{event(2, "k"), event(3, "k")})
	if got := ids(a.Next()); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("got %v, want [1 2 3]", got)
	}
}

func TestAFullQueueClosesOnlyThatSubscriptionAsASlowConsumer(t *testing.T) {
	h := hub.New(2, 0)
	slow := open(t, h, "slow", "k")
	fast := open(t, h, "fast", "k")
	for i := int64(1); i <= 3; i++ {
		h.Publish([]eventlog.Event{event(i, "k")})
		fast.Next()
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("slow subscription still open after its queue overflowed")
	}
	if !errors.Is(slow.Err(), hub.ErrSlowConsumer) {
		t.Fatalf("slow ended with %v, want ErrSlowConsumer", slow.Err())
	}
	if fast.Err() != nil {
		t.Fatalf("fast subscription ended: %v", fast.Err())
	}
	if n := h.Stats().SlowConsumers; n != 1 {
		t.Fatalf("slow consumers = %d, want 1", n)
	}
}

func TestAnOlderFilterLoadNeverReplacesANewerOne(t *testing.T) {
	h := hub.New(10, 0)
	s, _ := h.Subscribe("a", nil)
	older := h.NextGeneration()
	newer := h.NextGeneration()
	h.ApplyFilters(newer, map[string]filter.Filter{"a": {Exists: true, Keys: match.Keys{"templates": {"new"}}}})
	if _, err := h.Activate(s, older, filter.Filter{Exists: true, Keys: match.Keys{"templates": {"old"}}}); err != nil {
		t.Fatal(err)
	}
	if got := s.Keys()["templates"]; len(got) != 1 || got[0] != "new" {
		t.Fatalf("keys %v, want [new]", got)
	}
}

func TestAFilterSayingTheSubscriberIsGoneClosesItsSubscriptions(t *testing.T) {
	h := hub.New(10, 0)
	s := open(t, h, "a", "k")
	h.ApplyFilters(h.NextGeneration(), map[string]filter.Filter{"a": {Exists: false}})
	if !errors.Is(s.Err(), hub.ErrSubscriberGone) {
		t.Fatalf("got %v, want ErrSubscriberGone", s.Err())
	}
	if len(h.Connected()) != 0 {
		t.Fatalf("still connected: %v", h.Connected())
	}
}

func TestSubscribingToTopicsKeepsOnlyTheirKeys(t *testing.T) {
	h := hub.New(10, 0)
	s, _ := h.Subscribe("a", []string{"messages"})
	_, _ = h.Activate(s, h.NextGeneration(), filter.Filter{Exists: true, Keys: match.Keys{"templates": {"k"}, "messages": {"k"}}})
	h.Publish([]eventlog.Event{event(1, "k")}) // a templates event
	if got := s.Next(); len(got) != 0 {
		t.Fatalf("subscription to messages received %d templates events", len(got))
	}
}

func TestShutdownClosesEverySubscriptionAndRefusesNewOnes(t *testing.T) {
	h := hub.New(10, 0)
	s := open(t, h, "a", "k")
	h.Shutdown()
	if !errors.Is(s.Err(), hub.ErrShutdown) {
		t.Fatalf("got %v, want ErrShutdown", s.Err())
	}
	if _, err := h.Subscribe("b", nil); !errors.Is(err, hub.ErrShutdown) {
		t.Fatalf("Subscribe after Shutdown: %v, want ErrShutdown", err)
	}
}

func TestAnnouncedEventsArePublishedOnlyWhenTheyFollowThePosition(t *testing.T) {
	h := hub.New(10, 0)
	a := open(t, h, "a", "k")
	h.Publish([]eventlog.Event{event(1, "k")})
	if h.PublishAfter(eventlog.ID{Xid: 100, Seq: 2}, []eventlog.Event{event(3, "k")}) {
		t.Fatal("published events that skip event 2")
	}
	if !h.PublishAfter(eventlog.ID{Xid: 100, Seq: 1}, []eventlog.Event{event(2, "k"), event(3, "k")}) {
		t.Fatal("refused events that follow the position")
	}
	if got := ids(a.Next()); len(got) != 3 || got[2] != 3 {
		t.Fatalf("got %v, want [1 2 3]", got)
	}
}

func TestAPublishedMessageCarriesWhenTheHubTookIt(t *testing.T) {
	h := hub.New(10, 0)
	a := open(t, h, "a", "location:1")
	before := time.Now()
	h.Publish([]eventlog.Event{event(1, "location:1"), event(2, "location:1")})
	after := time.Now()
	msgs := a.Next()
	if len(msgs) != 2 {
		t.Fatalf("got %d messages, want 2", len(msgs))
	}
	for _, m := range msgs {
		if m.Published.Before(before) || m.Published.After(after) {
			t.Errorf("event %d published at %v, want between %v and %v", m.ID.Seq, m.Published, before, after)
		}
	}
	if got := hub.NewMessage(event(3)).Published; !got.IsZero() {
		t.Errorf("a message built outside the hub has Published %v, want zero", got)
	}
}

// A transport asks every stream's Err at each of its turns, while the hub
// is still queueing the same event to other recipients: Err must not wait
// for the hub's lock, or no writer starts before the last recipient is
// queued.
func TestErrAnswersWhileTheHubIsFanningOutAnEvent(t *testing.T) {
	h := hub.New(10, 0)
	closed := open(t, h, "gone", "location:1")
	live := open(t, h, "live", "location:1")
	closed.Close()
	queued := open(t, h, "queued", "location:1")
	type answers struct{ closed, live error }
	got := make(chan answers, 1)
	var during []answers
	// Notify runs with the hub's lock held, in the middle of the fan-out.
	queued.Notify(func() {
		go func() { got <- answers{closed.Err(), live.Err()} }()
		select {
		case a := <-got:
			during = append(during, a)
		case <-time.After(10 * time.Second):
			t.Error("Err waited for the hub's lock during a fan-out")
		}
	})
	h.Publish([]eventlog.Event{event(1, "location:1")})
	if len(during) != 1 {
		t.Fatalf("Err answered %d times during the fan-out, want once", len(during))
	}
	if a := during[0]; !errors.Is(a.closed, hub.ErrClosed) || a.live != nil {
		t.Errorf("during the fan-out: closed stream's Err %v, open stream's %v; want %v and nil", a.closed, a.live, hub.ErrClosed)
	}
}
