package invariant

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/internal/sseframe"
)

// ErrRejected means a relay refused the client for good (400, 401 or 403):
// retrying cannot help, so the client stops.
var ErrRejected = errors.New("relay rejected the subscription")

// Client is a resilient subscriber over SSE (or WebSocket). Like a browser's EventSource behind
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
	transport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ResponseHeaderTimeout: 30 * time.Second,
		// Every stream is its own connection, as for a browser tab that
		// reconnects after the server went away.
		DisableKeepAlives: true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	if c.StartAfter != "" && c.LastID() == "" {
		c.lastID.Store(c.StartAfter)
	}
	backoff := 20 * time.Millisecond
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			return nil
		}
		base := c.Relays[i%len(c.Relays)]
		var opened bool
		var err error
		if c.WebSocket {
			opened, err = c.streamWS(ctx, base)
		} else {
			opened, err = c.stream(ctx, client, base)
		}
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

// stream opens one stream on base and reads it until it ends. opened says
// whether the relay answered 200.
func (c *Client) stream(ctx context.Context, client *http.Client, base string) (opened bool, err error) {
	q := url.Values{}
	for _, t := range c.Topics {
		q.Add("topic", t)
	}
	u := base + "/events"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, fmt.Errorf("%w: build request: %v", ErrRejected, err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if id := c.LastID(); id != "" {
		req.Header.Set("Last-Event-ID", id)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", base, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return false, fmt.Errorf("%w: %s: %s %s", ErrRejected, base, resp.Status, strings.TrimSpace(string(body)))
	default:
		return false, fmt.Errorf("%s: %s", base, resp.Status)
	}
	c.connects.Add(1)
	return true, c.read(ctx, resp.Body)
}

// read parses the event stream (the WHATWG rules a browser applies: field
// "name: value" lines, an event dispatched at a blank line, the last id
// remembered even across events without one).
func (c *Client) read(ctx context.Context, body io.Reader) error {
	r := sseframe.NewReader(body, 64<<10)
	events := 0
	if c.BeforeEvent != nil {
		c.BeforeEvent(ctx)
	}
	for {
		f, err := r.Next()
		if err != nil {
			// EOF or a broken connection: the caller reconnects.
			return err
		}
		if f.IsComment() {
			continue // heartbeat or a closing reason
		}
		if f.HasID {
			c.lastID.Store(string(f.ID))
		}
		if !f.HasData && len(f.Event) == 0 {
			continue
		}
		c.dispatch(string(f.ID), string(f.Event), string(f.Data))
		events++
		if c.EventsPerConnection > 0 && events >= c.EventsPerConnection {
			return nil
		}
		if c.BeforeEvent != nil {
			c.BeforeEvent(ctx)
		}
	}
}

func (c *Client) dispatch(id, event, data string) {
	if event == "reset" {
		c.Checker.RecordReset(c.Subscriber)
		return
	}
	if event == "" {
		event = "message"
	}
	c.Checker.Record(c.Subscriber, Delivery{ID: id, Topic: event, Data: data})
}
