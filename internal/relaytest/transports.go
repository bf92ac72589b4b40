package relaytest

import (
	"testing"
	"time"
)

// Stream is an open stream of events as a test reads it, whatever the
// transport.
type Stream interface {
	// Collect waits until n events arrived (failing after timeout) and
	// returns them.
	Collect(t testing.TB, n int, timeout time.Duration) []Event
	// Quiet fails the test if an event arrives within d.
	Quiet(t testing.TB, d time.Duration)
	// Close ends the stream from the client's side.
	Close()
}

// Transport opens streams over one of the relay's transports.
type Transport struct {
	Name      string
	Subscribe func(t testing.TB, baseURL, token string, opts SSEOptions) Stream
}

// Transports are every transport a relay serves events on: what must hold
// on each of them is tested once, over this table.
var Transports = []Transport{
	{"sse", func(t testing.TB, baseURL, token string, opts SSEOptions) Stream {
		return Subscribe(t, baseURL, token, opts)
	}},
	{"ws", func(t testing.TB, baseURL, token string, opts SSEOptions) Stream {
		return SubscribeWS(t, baseURL, token, opts)
	}},
}
