// Package streamclient is pgrelay's own subscriber: one client for GET
// /events (Server-Sent Events) and one for GET /ws (WebSocket), used by the
// end-to-end tests, the invariant checker and the benchmark alike, so that
// all three read the relay's bytes the same way.
//
// A stream is a plain TCP connection that speaks HTTP/1.1 itself, with
// small buffers, read by whoever calls Next: it starts no goroutine, so a
// load generator holds tens of thousands of streams beside the relay, and a
// reader that stops calling Next stops reading the socket, as a stalled
// browser tab does.
package streamclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultBufferSize is the read buffer of each layer of a stream when
// Options.BufferSize is zero.
const DefaultBufferSize = 4 << 10

// DefaultMaxMessage is the largest WebSocket message a stream accepts when
// Options.MaxMessage is zero: rows of any size are delivered whole, but a
// length field is not trusted with the client's memory.
const DefaultMaxMessage = 64 << 20

// maxRefusalBody bounds how much of a refusal's body is kept.
const maxRefusalBody = 64 << 10

// Options shape a stream: what every transport takes (topics, the id to
// resume after, the token), and what a test or the benchmark adds.
type Options struct {
	Topics []string
	// LastEventID resumes after that id: the Last-Event-ID header for SSE,
	// the last_event_id parameter for WebSocket.
	LastEventID string
	// Token is sent as "Authorization: Bearer", or as the access_token
	// parameter with TokenInQuery (as a browser's EventSource must).
	Token        string
	TokenInQuery bool
	// Header and Query are added to the request as they are.
	Header http.Header
	Query  url.Values
	// BufferSize is the read buffer of each layer; DefaultBufferSize if
	// zero. Longer lines and messages are read whole all the same.
	BufferSize int
	// MaxMessage bounds a WebSocket message; DefaultMaxMessage if zero.
	MaxMessage int
}

func (o Options) bufferSize() int {
	if o.BufferSize > 0 {
		return o.BufferSize
	}
	return DefaultBufferSize
}

func (o Options) maxMessage() int {
	if o.MaxMessage > 0 {
		return o.MaxMessage
	}
	return DefaultMaxMessage
}

// Dialer opens the TCP connection to the relay; nil dials with a 10s
// timeout from any local address.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Event is one event of a stream. Its slices are valid until the stream's
// next call to Next.
type Event struct {
	ID []byte
	// Type is the topic (SSE's event field, WebSocket's topic), or "reset"
	// when the id resumed after is older than what the relay retains.
	Type []byte
	// Data is the row as JSON (for a reset, the reason).
	Data []byte
}

// Stream is one open subscription, read by one goroutine.
type Stream interface {
	// Next blocks until the next event. When the relay ends the stream on
	// purpose it returns a *ClosedError.
	Next() (Event, error)
	// Close drops the connection.
	Close() error
}

// RejectedError is the relay's refusal of a stream: an answer other than
// 200 (SSE) or 101 (WebSocket).
type RejectedError struct {
	Status int
	Header http.Header
	// Body is the start of the answer's body (the JSON error).
	Body string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("relay refused the stream: HTTP %d: %s", e.Status, e.Body)
}

// RetryAfter returns how long a refusal asks the client to wait before it
// tries again, from its Retry-After header (delay-seconds, or an HTTP date
// read against now), and whether it asks at all. Only 503 and 429 answers
// ask: another status means the request itself was wrong.
func RetryAfter(err error, now time.Time) (time.Duration, bool) {
	var rej *RejectedError
	if !errors.As(err, &rej) || (rej.Status != http.StatusServiceUnavailable && rej.Status != http.StatusTooManyRequests) {
		return 0, false
	}
	v := strings.TrimSpace(rej.Header.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(s, 0)) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// ClosedError is the relay ending a stream on purpose and saying why: a
// WebSocket close frame (Code and Reason), or, over SSE, the comment that
// preceded the end of the body (Code 0).
type ClosedError struct {
	Code   int
	Reason string
}

func (e *ClosedError) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("relay closed the stream: %s", e.Reason)
	}
	return fmt.Sprintf("relay closed the stream: %d %s", e.Code, e.Reason)
}

// ErrMalformed is a message that is not the relay's wire format: a bug of
// the relay, not a reason to reconnect.
var ErrMalformed = errors.New("malformed message from the relay")

// IsSlowConsumer reports whether err is the relay closing the stream
// because the client fell behind (it resumes with the last id it saw).
func IsSlowConsumer(err error) bool {
	var ce *ClosedError
	return errors.As(err, &ce) && strings.Contains(ce.Reason, "slow consumer")
}

// handshake sends req on a new connection to its host and reads the
// answer's head. A stream that does not answer is bounded by ctx (its
// deadline, or its cancellation).
func handshake(ctx context.Context, dial Dialer, req *http.Request, bufSize int) (net.Conn, *bufio.Reader, *http.Response, error) {
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	conn, err := dial(ctx, "tcp", hostPort(req.URL))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect to %s: %w", req.URL.Host, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// Cancelling ctx interrupts the handshake without a goroutine waiting
	// for it.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(what string, err error) (net.Conn, *bufio.Reader, *http.Response, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, nil, fmt.Errorf("%s %s: %w", what, req.URL.Host, err)
	}
	if err := req.Write(conn); err != nil {
		return fail("send request to", err)
	}
	br := bufio.NewReaderSize(conn, bufSize)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail("read answer from", err)
	}
	if !stop() {
		return fail("read answer from", ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, resp, nil
}

// refusal reads what the relay said when it refused a stream, and closes
// the connection.
func refusal(conn net.Conn, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxRefusalBody))
	conn.Close()
	return &RejectedError{Status: resp.StatusCode, Header: resp.Header, Body: string(bytes.TrimSpace(body))}
}

// request builds GET streamURL with the stream parameters of opts.
// lastIDParam names the query parameter that carries LastEventID ("" to
// send it as the Last-Event-ID header).
func request(ctx context.Context, streamURL string, opts Options, lastIDParam string) (*http.Request, error) {
	u, err := url.Parse(streamURL)
	if err != nil {
		return nil, fmt.Errorf("stream URL %q: %w", streamURL, err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "http"
	default:
		return nil, fmt.Errorf("stream URL %q: scheme %q, want http or ws", streamURL, u.Scheme)
	}
	// The parameters are added to the URL's query as it is written: a test
	// may send one the relay must refuse.
	q := url.Values{}
	for k, vs := range opts.Query {
		q[k] = append(q[k], vs...)
	}
	for _, t := range opts.Topics {
		q.Add("topic", t)
	}
	if opts.LastEventID != "" && lastIDParam != "" {
		q.Set(lastIDParam, opts.LastEventID)
	}
	if opts.Token != "" && opts.TokenInQuery {
		q.Set("access_token", opts.Token)
	}
	if add := q.Encode(); add != "" && u.RawQuery != "" {
		u.RawQuery += "&" + add
	} else if add != "" {
		u.RawQuery = add
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request for %s: %w", streamURL, err)
	}
	for k, vs := range opts.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	if opts.Token != "" && !opts.TokenInQuery {
		req.Header.Set("Authorization", "Bearer "+opts.Token)
	}
	if opts.LastEventID != "" && lastIDParam == "" {
		req.Header.Set("Last-Event-ID", opts.LastEventID)
	}
	return req, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "80")
}
