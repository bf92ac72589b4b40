package relaytest

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Event is one received event, whatever the transport: Event is the SSE
// event field, or the WebSocket message's topic ("reset" for a reset).
type Event struct {
	ID    string
	Event string
	Data  string
}

// SSEOptions shape a subscription (over either transport).
type SSEOptions struct {
	Topics      []string
	LastEventID string
}

// SSE is a GET /events stream read in the background by streamclient's
// SSE client into Events, with what a test checks besides: the status and
// body of a refusal, comment lines, and the moment the stream ended.
type SSE struct {
	// Status and Header are the answer's; Body is the whole body of an
	// answer other than 200.
	Status int
	Header http.Header
	Body   string
	// Events receives every event (retry hints and comments excluded).
	Events chan Event

	stream   *streamclient.SSE
	done     chan struct{}
	mu       sync.Mutex
	comments []string
	err      error
}

// Subscribe opens GET /events on baseURL as token's subscriber, failing the
// test unless the relay answers 200.
func Subscribe(t testing.TB, baseURL, token string, opts SSEOptions) *SSE {
	t.Helper()
	s := OpenSSE(t, eventsURL(baseURL, opts), sseHeader(token, opts))
	if s.Status != http.StatusOK {
		t.Fatalf("subscribe %s: %d %s", baseURL, s.Status, s.Body)
	}
	return s
}

func eventsURL(baseURL string, opts SSEOptions) string {
	return baseURL + "/events?" + url.Values{"topic": opts.Topics}.Encode()
}

func sseHeader(token string, opts SSEOptions) http.Header {
	h := BearerHeader(token)
	if opts.LastEventID != "" {
		h.Set("Last-Event-ID", opts.LastEventID)
	}
	return h
}

// OpenSSE sends GET rawURL with header and, for a 200 answer, reads the
// stream in the background until it ends or the test ends.
func OpenSSE(t testing.TB, rawURL string, header http.Header) *SSE {
	t.Helper()
	s := dialSSE(t, rawURL, header)
	if s.stream != nil {
		go s.read()
	}
	return s
}

// dialSSE opens the stream without reading it.
func dialSSE(t testing.TB, rawURL string, header http.Header) *SSE {
	t.Helper()
	s := &SSE{Events: make(chan Event, 100000), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := streamclient.OpenSSE(ctx, nil, rawURL, streamclient.Options{Header: header, BufferSize: 64 << 10})
	var rej *streamclient.RejectedError
	switch {
	case errors.As(err, &rej):
		s.Status, s.Header, s.Body = rej.Status, rej.Header, rej.Body
		close(s.done)
		return s
	case err != nil:
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	s.Status, s.Header, s.stream = http.StatusOK, st.Header, st
	st.OnComment = func(c []byte) {
		s.mu.Lock()
		s.comments = append(s.comments, string(c))
		s.mu.Unlock()
	}
	t.Cleanup(s.Close)
	return s
}

func (s *SSE) read() {
	defer close(s.done)
	for {
		e, err := s.stream.Next()
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		s.Events <- Event{ID: string(e.ID), Event: string(e.Type), Data: string(e.Data)}
	}
}

// Done is closed when the stream has ended (or was refused).
func (s *SSE) Done() <-chan struct{} { return s.done }

// Err returns why the stream ended (a *streamclient.ClosedError with the
// relay's reason when it said one), nil while it is open.
func (s *SSE) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Comments returns the comment lines received so far.
func (s *SSE) Comments() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.comments...)
}

// CollectUnlessEnded waits until n events arrived and returns them, or
// returns what arrived and why if the stream ends first (ended false while
// it is open). It fails the test after timeout.
func (s *SSE) CollectUnlessEnded(t testing.TB, n int, timeout time.Duration) (events []Event, end End, ended bool) {
	t.Helper()
	out := make([]Event, 0, min(n, 1024))
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case e := <-s.Events:
			out = append(out, e)
		case <-s.done:
			for len(s.Events) > 0 {
				out = append(out, <-s.Events)
			}
			if len(out) >= n {
				return out, End{}, false
			}
			return out, s.end(), true
		case <-deadline:
			t.Fatalf("got %d of %d events within %s; ids: %v", len(out), n, timeout, eventIDs(out))
		}
	}
	return out, End{}, false
}

// WaitEnd waits up to timeout for the stream to end and returns the events
// received before and why it ended.
func (s *SSE) WaitEnd(t testing.TB, timeout time.Duration) ([]Event, End) {
	t.Helper()
	events, end, ended := s.CollectUnlessEnded(t, math.MaxInt, timeout)
	if !ended {
		t.Fatalf("stream still open after %s (received %d events)", timeout, len(events))
	}
	return events, end
}

// end is why the stream ended: the relay's closing comment.
func (s *SSE) end() End {
	var ce *streamclient.ClosedError
	if errors.As(s.Err(), &ce) {
		return End{Reason: ce.Reason}
	}
	return End{}
}

// Close disconnects.
func (s *SSE) Close() {
	if s.stream != nil {
		_ = s.stream.Close()
	}
}

// Next waits up to timeout for the next event.
func (s *SSE) Next(t testing.TB, timeout time.Duration) Event {
	t.Helper()
	select {
	case e := <-s.Events:
		return e
	case <-time.After(timeout):
		t.Fatalf("no event within %s", timeout)
		return Event{}
	}
}

// Collect waits until n events arrived (failing after timeout, or if the
// stream ends first) and returns them.
func (s *SSE) Collect(t testing.TB, n int, timeout time.Duration) []Event {
	t.Helper()
	events, _, ended := s.CollectUnlessEnded(t, n, timeout)
	if ended {
		t.Fatalf("stream ended (%v) after %d of %d events; ids: %v", s.Err(), len(events), n, eventIDs(events))
	}
	return events
}

// Quiet asserts that no event arrives for d.
func (s *SSE) Quiet(t testing.TB, d time.Duration) {
	t.Helper()
	quiet(t, s.Events, d)
}

// BearerHeader returns an Authorization header carrying token.
func BearerHeader(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}
