package relaytest

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/sseframe"
)

// RawSSE is a Server-Sent Events connection read line by line, for tests that
// need what a library client hides: the status and body of a refusal, comment
// lines, and the moment the server ends the stream.
type RawSSE struct {
	// Status and Header are the response's; Body is the whole body of a
	// response other than 200.
	Status int
	Header http.Header
	Body   string
	// Events receives every event (retry hints and comments excluded).
	Events chan Event

	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	comments []string
}

// OpenSSE sends GET rawURL with header and, for a 200 answer, reads the
// stream in the background until it ends or the test ends.
func OpenSSE(t testing.TB, rawURL string, header http.Header) *RawSSE {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		cancel()
		t.Fatalf("build request %s: %v", rawURL, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	s := &RawSSE{Status: resp.StatusCode, Header: resp.Header, Events: make(chan Event, 100000), cancel: cancel, done: make(chan struct{})}
	t.Cleanup(s.Close)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.Body = string(body)
		close(s.done)
		return s
	}
	go s.read(resp.Body)
	return s
}

func (s *RawSSE) read(body io.ReadCloser) {
	defer close(s.done)
	defer body.Close()
	r := sseframe.NewReader(body, 64<<10)
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		switch {
		case f.IsComment():
			s.mu.Lock()
			s.comments = append(s.comments, string(f.Comment))
			s.mu.Unlock()
		case len(f.Event) > 0 || f.HasData:
			s.Events <- Event{ID: string(f.ID), Event: string(f.Event), Data: string(f.Data)}
		}
	}
}

// Done is closed when the stream has ended (or was refused).
func (s *RawSSE) Done() <-chan struct{} { return s.done }

// Comments returns the comment lines received so far.
func (s *RawSSE) Comments() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.comments...)
}

// Close disconnects.
func (s *RawSSE) Close() { s.cancel() }

// Collect waits until n events arrived (failing after timeout) and returns
// them.
func (s *RawSSE) Collect(t testing.TB, n int, timeout time.Duration) []Event {
	t.Helper()
	out := make([]Event, 0, n)
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case e := <-s.Events:
			out = append(out, e)
		case <-deadline:
			t.Fatalf("got %d of %d events within %s: %v", len(out), n, timeout, out)
		}
	}
	return out
}

// BearerHeader returns an Authorization header carrying token.
func BearerHeader(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}
