package relaybench

import (
	"context"
	"net/url"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Transport opens streams over one wire protocol. Adding a protocol means
// implementing this and naming it in Transports.
type Transport interface {
	// Open connects to base (a relay URL) as the holder of token and
	// returns once the relay accepted the stream; a lastEventID resumes
	// after that event.
	Open(ctx context.Context, dial streamclient.Dialer, base *url.URL, token string, topics []string, lastEventID string) (streamclient.Stream, error)
}

// Transports are the protocols relaybench speaks, by --transport name.
func Transports() map[string]Transport {
	return map[string]Transport{"sse": SSE{}, "ws": WebSocket{}, "pg_eventserv": Eventserv{}}
}

// SSE opens GET /events streams, the token in the Authorization header.
// Each is a raw connection with two 4 KiB buffers read by the stream's one
// goroutine (see streamclient), so that tens of thousands of streams fit in
// the load generator beside the relay.
type SSE struct{}

// Open implements Transport.
func (SSE) Open(ctx context.Context, dial streamclient.Dialer, base *url.URL, token string, topics []string, lastEventID string) (streamclient.Stream, error) {
	s, err := streamclient.OpenSSE(ctx, dial, base.JoinPath("events").String(), streamclient.Options{Topics: topics, Token: token, LastEventID: lastEventID})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// WebSocket opens GET /ws streams, the token in access_token as a browser
// sends it. Like SSE, each is a raw connection with a 4 KiB read buffer, so
// that the load generator costs the same per stream whichever transport it
// measures.
type WebSocket struct{}

// Open implements Transport.
func (WebSocket) Open(ctx context.Context, dial streamclient.Dialer, base *url.URL, token string, topics []string, lastEventID string) (streamclient.Stream, error) {
	s, err := streamclient.OpenWS(ctx, dial, base.JoinPath("ws").String(), streamclient.Options{Topics: topics, Token: token, TokenInQuery: true, LastEventID: lastEventID})
	if err != nil {
		return nil, err
	}
	return s, nil
}
