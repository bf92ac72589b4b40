package relay_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/r3labs/sse/v2"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// r3labs/sse is an SSE client nobody here wrote: it parses the stream by
// its own reading of the format and keeps the last event id itself, as a
// browser's EventSource does. What it reads must be what the contract
// says, and the id it kept must resume exactly on another relay.
func TestAnSSEClientNobodyHereWroteReadsTheEventsAndResumesFromTheIDItKept(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	a := relaytest.Start(t, db.URL)
	b := relaytest.Start(t, db.URL)
	token := relaytest.Token(t, "zewi-1")

	first := independentSSE(t, a.URL, token, nil)
	relaytest.InsertTemplate(t, db, "before", "zolo-1", "loc-1")
	if got := first.names(t, 1); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("first stream got %q, want [before]", got)
	}
	kept := first.stop()

	relaytest.InsertTemplate(t, db, "missed-1", "zolo-1", "loc-1")
	relaytest.InsertTemplate(t, db, "not for zewi", "zolo-9", "loc-9")
	relaytest.InsertTemplate(t, db, "missed-2", "zelo-1", "loc-2")

	second := independentSSE(t, b.URL, token, kept)
	if got, want := second.names(t, 2), []string{"missed-1", "missed-2"}; !slices.Equal(got, want) {
		t.Fatalf("resumed with the client's own Last-Event-ID %q, got %q, want %q", kept, got, want)
	}
	relaytest.InsertTemplate(t, db, "live", "zolo-1", "loc-3")
	if got := second.names(t, 1); !slices.Equal(got, []string{"live"}) {
		t.Fatalf("after the replay got %q, want [live]", got)
	}
}

type r3Stream struct {
	client *sse.Client
	events chan *sse.Event
	cancel context.CancelFunc
	done   chan struct{}
}

// independentSSE subscribes to GET /events with r3labs/sse, resuming after
// lastID if it is set, and without its reconnecting (the test decides where
// to resume).
func independentSSE(t *testing.T, baseURL, token string, lastID []byte) *r3Stream {
	t.Helper()
	c := sse.NewClient(baseURL + "/events")
	c.Headers["Authorization"] = "Bearer " + token
	c.ReconnectStrategy = nil
	if lastID != nil {
		c.LastEventID.Store(lastID)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &r3Stream{client: c, events: make(chan *sse.Event, 100), cancel: cancel, done: make(chan struct{})}
	connected := make(chan struct{})
	c.OnConnect(func(*sse.Client) {
		select {
		case <-connected:
		default:
			close(connected)
		}
	})
	go func() {
		defer close(s.done)
		_ = c.SubscribeRawWithContext(ctx, func(e *sse.Event) {
			// The library hands over a retry hint as an event of its
			// own; EventSource dispatches no event without data.
			if len(e.Data) == 0 {
				return
			}
			s.events <- &sse.Event{ID: slices.Clone(e.ID), Event: slices.Clone(e.Event), Data: slices.Clone(e.Data)}
		})
	}()
	t.Cleanup(func() { s.stop() })
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("r3labs/sse did not connect within 10 s")
	}
	// Connected means the response headers arrived; the relay has then
	// loaded the stream's filter.
	return s
}

// names reads n events and returns their template names, checking each is
// a templates event with an id.
func (s *r3Stream) names(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		select {
		case e := <-s.events:
			if string(e.Event) != "templates" || len(e.ID) == 0 {
				t.Fatalf("event %q with id %q, want a templates event with an id", e.Event, e.ID)
			}
			var row struct{ Name string }
			if err := json.Unmarshal(e.Data, &row); err != nil {
				t.Fatalf("data %q is not the row as JSON: %v", e.Data, err)
			}
			out = append(out, row.Name)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %q, still waiting for %d more", out, n-len(out))
		}
	}
	return out
}

// stop ends the subscription and returns the last event id the client kept.
func (s *r3Stream) stop() []byte {
	s.cancel()
	<-s.done
	id, _ := s.client.LastEventID.Load().([]byte)
	return id
}
