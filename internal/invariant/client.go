package invariant

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// ErrRejected means a relay refused the client for good (400, 401 or 403):
// retrying cannot help, so the client stops.
var ErrRejected = errors.New("relay rejected the subscription")

// Client is a resilient subscriber over SSE or WebSocket (streamclient's
// clients). Like a browser's EventSource behind
// a load balancer, it reconnects after any disconnect, to the next relay of
// Relays in turn, sending the id of the last event it received as
// Last-Event-ID; it records every event in Checker.
type Client struct {
	Subscriber string
	Token      string
	// Relays are base URLs (http://host:port); connections go round-robin.
	Relays  []string
	Topics  []string
	Checker *Checker
	// StartAfter, if set, is the Last-Event-ID of the first connection.
	StartAfter string

	// BeforeEvent, if set, runs before each event is read from the stream:
	// it can sleep (a slow reader) or block (a reader that stopped). It must
	// return when ctx is done.
	BeforeEvent func(ctx context.Context)
	// EventsPerConnection, if positive, closes the stream after that many
	// events and reconnects at once: a client in a tight reconnect loop.
	EventsPerConnection int
	// WebSocket subscribes through GET /ws instead of GET /events.
	WebSocket bool

	lastID    atomic.Value // string
	connects  atomic.Int64
	failures  atomic.Int64
	lastError atomic.Value // string
}

// Connects returns how many streams the client opened.
func (c *Client) Connects() int64 { return c.connects.Load() }

// Failures returns how many connection attempts failed (refused, 5xx, or
// dropped before the stream opened).
func (c *Client) Failures() int64 { return c.failures.Load() }

// LastID returns the id of the last event received ("" before any).
func (c *Client) LastID() string {
	s, _ := c.lastID.Load().(string)
	return s
}

// Run subscribes until ctx is done (then it returns nil) or a relay rejects
// the client for good.
func (c *Client) Run(ctx context.Context) error {
	if c.StartAfter != "" && c.LastID() == "" {
		c.lastID.Store(c.StartAfter)
	}
	backoff := 20 * time.Millisecond
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			return nil
		}
		opened, err := c.stream(ctx, c.Relays[i%len(c.Relays)])
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRejected) {
			return err
		}
		if opened {
			backoff = 20 * time.Millisecond
			continue
		}
		c.failures.Add(1)
		if err != nil {
			c.lastError.Store(err.Error())
		}
		// Back off a little after a failed attempt, as EventSource does with
		// its retry delay; a quick first retry keeps the tests fast.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// LastError returns the last connection failure ("" if none).
func (c *Client) LastError() string {
	s, _ := c.lastError.Load().(string)
	return s
}

// stream opens one stream on base, resuming after the last id, and reads
// it until it ends. opened says whether the relay accepted it.
func (c *Client) stream(ctx context.Context, base string) (opened bool, err error) {
	st, err := c.open(ctx, base)
	var rej *streamclient.RejectedError
	if errors.As(err, &rej) {
		switch rej.Status {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
			return false, fmt.Errorf("%w: %s: %v", ErrRejected, base, err)
		}
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", base, err)
	}
	defer st.Close()
	// Streams are read without a goroutine of their own: ending ctx ends
	// the read by closing the connection.
	defer context.AfterFunc(ctx, func() { st.Close() })()
	c.connects.Add(1)
	return true, c.read(ctx, st)
}

// open connects to base over the client's transport. Every stream is its
// own connection, as for a browser tab that reconnects after the server
// went away.
func (c *Client) open(ctx context.Context, base string) (streamclient.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	opts := streamclient.Options{Topics: c.Topics, LastEventID: c.LastID(), Token: c.Token}
	if c.WebSocket {
		return streamclient.OpenWS(ctx, nil, base+"/ws", opts)
	}
	return streamclient.OpenSSE(ctx, nil, base+"/events", opts)
}

// read records the stream's events until it ends (the relay closed it, the
// connection broke, or EventsPerConnection were read); the caller
// reconnects.
func (c *Client) read(ctx context.Context, st streamclient.Stream) error {
	for events := 0; c.EventsPerConnection <= 0 || events < c.EventsPerConnection; events++ {
		if c.BeforeEvent != nil {
			c.BeforeEvent(ctx)
		}
		ev, err := st.Next()
		if errors.Is(err, streamclient.ErrMalformed) {
			return errors.Join(ErrRejected, err)
		}
		if err != nil {
			return err
		}
		if len(ev.ID) > 0 {
			c.lastID.Store(string(ev.ID))
		}
		if string(ev.Type) == "reset" {
			c.Checker.RecordReset(c.Subscriber)
			continue
		}
		topic := string(ev.Type)
		if topic == "" {
			topic = "message"
		}
		c.Checker.Record(c.Subscriber, Delivery{ID: string(ev.ID), Topic: topic, Data: string(ev.Data)})
	}
	if ws, ok := st.(*streamclient.WS); ok {
		_ = ws.CloseWith(1000, "reconnecting")
	}
	return nil
}
