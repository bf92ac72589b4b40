package relaybench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
)

// Event is one event as a client received it. Its slices are valid until
// the stream's next call to Next.
type Event struct {
	ID   []byte
	Type []byte // topic (SSE "event:" field, WebSocket "topic")
	Data []byte // the row as JSON
}

// Stream is one open subscription, read by one goroutine.
type Stream interface {
	// Next blocks until the next event. It returns an error wrapping
	// ErrSlowConsumer when the relay closed the stream because the client
	// fell behind.
	Next() (Event, error)
	// Close ends the stream.
	Close() error
}

// ErrSlowConsumer reports that the relay dropped the client for being slow.
var ErrSlowConsumer = errors.New("relay closed the stream: slow consumer")

// DialFunc opens a TCP connection to the relay (from the source address the
// caller chose).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Transport opens streams over one wire protocol. Adding a protocol means
// implementing this and naming it in Transports.
type Transport interface {
	// Open connects to base (a relay URL) as the holder of token and
	// returns once the relay accepted the stream.
	Open(ctx context.Context, dial DialFunc, base *url.URL, token string, topics []string) (Stream, error)
}

// Transports are the protocols relaybench speaks, by --transport name.
func Transports() map[string]Transport {
	return map[string]Transport{"sse": SSE{}, "ws": WebSocket{}}
}

// RejectedError is a relay's refusal of a stream (a non-2xx status).
type RejectedError struct {
	Status int
	Body   string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("relay refused the stream: HTTP %d: %s", e.Status, e.Body)
}
