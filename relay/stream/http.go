package stream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/httpjson"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
)

// ErrBadRequest wraps every problem with a request's parameters (HTTP 400).
var ErrBadRequest = errors.New("bad request")

var topicName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`)

// maxTopics bounds the topic parameters of one request.
const maxTopics = 64

// ParseRequest reads the stream parameters every transport shares: topic
// (repeatable), and the resume id from the Last-Event-ID header or the
// last_event_id parameter. The subscriber is set by the caller after
// authentication.
func ParseRequest(r *http.Request) (Request, error) {
	var req Request
	// r.URL.Query() silently drops pairs it cannot parse (a ';', a bad %
	// escape): a client would get a stream it did not ask for.
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return req, fmt.Errorf("%w: query string: %w", ErrBadRequest, err)
	}
	if topics, ok := q["topic"]; ok {
		if len(topics) > maxTopics {
			return req, fmt.Errorf("%w: at most %d topic parameters", ErrBadRequest, maxTopics)
		}
		req.Topics = []string{}
		for _, t := range topics {
			if !topicName.MatchString(t) {
				return req, fmt.Errorf("%w: topic %q is not a valid topic name", ErrBadRequest, truncate(t))
			}
			req.Topics = append(req.Topics, t)
		}
	}
	if v := r.Header.Values("Last-Event-ID"); len(v) > 1 && slices.ContainsFunc(v[1:], func(s string) bool { return s != v[0] }) {
		return req, fmt.Errorf("%w: conflicting Last-Event-ID headers", ErrBadRequest)
	}
	if v := q["last_event_id"]; len(v) > 1 && slices.ContainsFunc(v[1:], func(s string) bool { return s != v[0] }) {
		return req, fmt.Errorf("%w: conflicting last_event_id parameters", ErrBadRequest)
	}
	last := r.Header.Get("Last-Event-ID")
	source := "Last-Event-ID header"
	if last == "" {
		last, source = q.Get("last_event_id"), "last_event_id parameter"
	}
	if last != "" {
		id, err := eventlog.ParseID(last)
		if err != nil {
			return req, fmt.Errorf("%w: %s: %w", ErrBadRequest, source, err)
		}
		req.After = &id
	}
	return req, nil
}

func truncate(s string) string {
	if len(s) > 48 {
		return s[:48] + "…"
	}
	return s
}

// Status returns the HTTP status for an error from authentication, parsing
// or Open.
func Status(err error) int {
	switch {
	case errors.Is(err, auth.ErrNoToken), errors.Is(err, auth.ErrBadToken):
		return http.StatusUnauthorized
	case errors.Is(err, ErrUnknownSubscriber):
		return http.StatusForbidden
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrUnknownTopic):
		return http.StatusBadRequest
	case errors.Is(err, limit.ErrUserFull):
		return http.StatusTooManyRequests
	case errors.Is(err, hub.ErrShutdown), errors.Is(err, limit.ErrRelayFull), errors.Is(err, limit.ErrBusy):
		return http.StatusServiceUnavailable
	default:
		var r *Refusal
		if errors.As(err, &r) {
			return r.Status
		}
		return http.StatusInternalServerError
	}
}

// Refusal is a transport's own reason not to serve a request, with the
// status and headers to answer it with (for example 426 and Upgrade for a
// plain GET on the WebSocket endpoint).
type Refusal struct {
	Status int
	Header http.Header
	Err    error
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// WriteError answers with status and a JSON body {"error": "..."}. Internal
// errors are not described to the client.
func WriteError(w http.ResponseWriter, status int, err error) {
	msg := err.Error()
	if status >= http.StatusInternalServerError && !Unavailable(err) {
		msg = "temporarily unavailable; retry shortly"
	}
	httpjson.Error(w, status, msg)
}

// Unavailable reports whether err is a refusal for a passing condition the
// client may be told of as it is (503 with Retry-After): the relay shutting
// down, at its connection limit, or busy opening other streams. Other
// failures are not described to clients.
func Unavailable(err error) bool {
	return errors.Is(err, hub.ErrShutdown) || errors.Is(err, limit.ErrRelayFull) || errors.Is(err, limit.ErrBusy)
}

// LogReason describes why a request was refused for the relay's log. It
// never includes what the client sent (parameter values, tokens), which may
// be confidential: only the kind of problem.
func LogReason(err error) string {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return "missing token"
	case errors.Is(err, auth.ErrBadToken):
		return "invalid token"
	case errors.Is(err, ErrUnknownSubscriber):
		return "unknown subscriber"
	case errors.Is(err, ErrUnknownTopic):
		return "unknown topic"
	case errors.Is(err, ErrBadRequest):
		return "bad request parameter"
	case errors.Is(err, hub.ErrShutdown):
		return "shutting down"
	case errors.Is(err, limit.ErrRelayFull):
		return "relay at its connection limit"
	case errors.Is(err, limit.ErrUserFull):
		return "subscriber at its connection limit"
	case errors.Is(err, limit.ErrBusy):
		return "relay busy opening other streams"
	default:
		var r *Refusal
		if errors.As(err, &r) {
			return "not served by this transport"
		}
		return "error"
	}
}

// RefusalReason is the reason label a refusal is counted under in the
// relay's metrics (pgrelay_stream_refusals_total): a small fixed set, so
// that the series stay few whatever clients send.
func RefusalReason(err error) string {
	switch {
	case errors.Is(err, auth.ErrNoToken), errors.Is(err, auth.ErrBadToken):
		return "unauthorized"
	case errors.Is(err, ErrUnknownSubscriber):
		return "forbidden"
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrUnknownTopic):
		return "bad_request"
	case errors.Is(err, hub.ErrShutdown):
		return "shutting_down"
	case errors.Is(err, limit.ErrRelayFull):
		return "relay_full"
	case errors.Is(err, limit.ErrUserFull):
		return "subscriber_full"
	case errors.Is(err, limit.ErrBusy):
		return "busy"
	case errors.Is(err, context.Canceled):
		return "client_gone"
	default:
		var r *Refusal
		if errors.As(err, &r) {
			return "transport"
		}
		return "unavailable"
	}
}
