package relaytest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Stream is an open stream of events as a test reads it, whatever the
// transport.
type Stream interface {
	// Collect waits until n events arrived (failing after timeout) and
	// returns them.
	Collect(t testing.TB, n int, timeout time.Duration) []Event
	// CollectUnlessEnded waits until n events arrived and returns them,
	// or returns what arrived and why if the stream ends first (ended
	// false while it is open). It fails the test after timeout.
	CollectUnlessEnded(t testing.TB, n int, timeout time.Duration) (events []Event, end End, ended bool)
	// WaitEnd waits up to timeout for the stream to end and returns the
	// events received before and why it ended.
	WaitEnd(t testing.TB, timeout time.Duration) ([]Event, End)
	// Quiet fails the test if an event arrives within d.
	Quiet(t testing.TB, d time.Duration)
	// Close ends the stream from the client's side.
	Close()
}

// End is why the relay ended a stream, as the transport tells it: a
// WebSocket close code and reason, or the comment an SSE stream ended with
// (Code 0). The zero End is a connection dropped without a word.
type End struct {
	Code   int
	Reason string
}

// Transport opens streams over one of the relay's transports.
type Transport struct {
	Name string
	// Open opens a stream with streamclient and leaves reading it to the
	// caller, for tests that shape the client (its dialer, its pace).
	Open func(ctx context.Context, dial streamclient.Dialer, baseURL string, opts streamclient.Options) (streamclient.Stream, error)
	// Subscribe opens a stream and reads it, failing the test unless the
	// relay accepts it.
	Subscribe func(t testing.TB, baseURL, token string, opts SSEOptions) Stream
	// Refusal opens a stream the relay must refuse and returns its answer:
	// the status and, for a JSON error, its message.
	Refusal func(t testing.TB, baseURL, token string, opts SSEOptions) (status int, message string)
	// Stalled opens a stream and does not read from it until start is
	// called, as a client that stopped reading: the relay's writes fill
	// the socket buffers.
	Stalled func(t testing.TB, baseURL, token string, opts SSEOptions) (start func() Stream)
}

// Transports are every transport a relay serves events on: what must hold
// on each of them is tested once, over this table.
var Transports = []Transport{
	{
		Name: "sse",
		Open: func(ctx context.Context, dial streamclient.Dialer, baseURL string, opts streamclient.Options) (streamclient.Stream, error) {
			s, err := streamclient.OpenSSE(ctx, dial, baseURL+"/events", opts)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		Subscribe: func(t testing.TB, baseURL, token string, opts SSEOptions) Stream {
			return Subscribe(t, baseURL, token, opts)
		},
		Refusal: func(t testing.TB, baseURL, token string, opts SSEOptions) (int, string) {
			t.Helper()
			s := OpenSSE(t, eventsURL(baseURL, opts), sseHeader(token, opts))
			if s.Status == http.StatusOK {
				t.Fatalf("GET /events as %s accepted, want a refusal", token)
			}
			return s.Status, errorMessage(t, s.Header, s.Body)
		},
		Stalled: func(t testing.TB, baseURL, token string, opts SSEOptions) func() Stream {
			t.Helper()
			s := dialSSE(t, eventsURL(baseURL, opts), sseHeader(token, opts))
			if s.Status != http.StatusOK {
				t.Fatalf("subscribe %s: %d %s", baseURL, s.Status, s.Body)
			}
			return func() Stream { go s.read(); return s }
		},
	},
	{
		Name: "ws",
		Open: func(ctx context.Context, dial streamclient.Dialer, baseURL string, opts streamclient.Options) (streamclient.Stream, error) {
			s, err := streamclient.OpenWS(ctx, dial, baseURL+"/ws", opts)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		Subscribe: func(t testing.TB, baseURL, token string, opts SSEOptions) Stream {
			return SubscribeWS(t, baseURL, token, opts)
		},
		Refusal: func(t testing.TB, baseURL, token string, opts SSEOptions) (int, string) {
			t.Helper()
			_, err := dialStreamWS(t, baseURL, token, opts)
			rej := refusal(t, err)
			return rej.Status, errorMessage(t, rej.Header, rej.Body)
		},
		Stalled: func(t testing.TB, baseURL, token string, opts SSEOptions) func() Stream {
			t.Helper()
			conn, err := dialStreamWS(t, baseURL, token, opts)
			if err != nil {
				t.Fatal(err)
			}
			return func() Stream { return readStreamWS(conn) }
		},
	},
}

// EachTransport runs test once per transport of Transports, in parallel
// subtests named after them, each with its own database holding the seed
// story.
func EachTransport(t *testing.T, test func(t *testing.T, tr Transport, db *pgtest.DB)) {
	t.Helper()
	for _, tr := range Transports {
		t.Run(tr.Name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			Seed(t, db)
			test(t, tr, db)
		})
	}
}

// quiet fails the test if an event arrives on events within d.
func quiet(t testing.TB, events <-chan Event, d time.Duration) {
	t.Helper()
	select {
	case e := <-events:
		t.Fatalf("unexpected event %s %s (%d bytes of data)", e.ID, e.Event, len(e.Data))
	case <-time.After(d):
	}
}
