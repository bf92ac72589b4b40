// Package sse serves event streams as Server-Sent Events (GET /events).
//
// The handler is written on net/http rather than on an SSE server library:
// every stream needs its own authenticated filter, replay from the database
// by Last-Event-ID, and a bounded queue shared with the WebSocket transport,
// which a library's in-memory broadcast streams cannot provide.
package sse

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// Handler serves GET /events.
type Handler struct {
	Auth    *auth.Verifier
	Streams *stream.Opener
	Log     *slog.Logger
	// WriteTimeout bounds one write to a client that stopped reading.
	WriteTimeout time.Duration
	// Retry is the reconnect delay suggested to clients.
	Retry time.Duration
	// Connected, if set, is called with +1 when a stream opens and -1 when
	// it closes.
	Connected func(delta int)
	// Limiter, if set, caps open streams (shared with the other transports).
	Limiter *limit.Limiter
	// Observer, if set, is told of every event this transport delivers.
	Observer stream.Observer
}

// refuse answers a request that gets no stream, and logs why (never the
// token: errors from auth describe it without echoing it).
func (h *Handler) refuse(w http.ResponseWriter, user string, err error) {
	status := stream.Status(err)
	if status == http.StatusInternalServerError {
		// Almost always the database being unreachable: tell the client to
		// come back rather than that it did something wrong.
		h.Log.Error("open event stream", "transport", "sse", "user", user, "err", err)
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "2")
	} else {
		h.Log.Info("stream refused", "transport", "sse", "user", user, "status", status, "reason", stream.LogReason(err))
	}
	stream.WriteError(w, status, err)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	subscriber, err := h.Auth.Subject(r)
	if err != nil {
		h.refuse(w, "", err)
		return
	}
	req, err := stream.ParseRequest(r)
	if err != nil {
		h.refuse(w, subscriber, err)
		return
	}
	req.Subscriber = subscriber
	req.Observer = h.Observer
	release, err := h.Limiter.Admit(w, subscriber)
	if err != nil {
		h.Log.Info("stream refused", "transport", "sse", "user", subscriber, "reason", err.Error())
		return
	}
	defer release()
	st, err := h.Streams.Open(r.Context(), req)
	if err != nil {
		h.refuse(w, subscriber, err)
		return
	}
	defer st.Close()

	rc := http.NewResponseController(w)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Connection", "keep-alive")
	hdr.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	if h.Connected != nil {
		h.Connected(1)
		defer h.Connected(-1)
	}
	sink := &sink{w: w, rc: rc, timeout: h.WriteTimeout}
	start := time.Now()
	h.Log.Info("stream opened", "transport", "sse", "user", subscriber, "topics", req.Topics, "resume", req.After != nil)
	if err := sink.write([]byte("retry: " + strconv.Itoa(int(h.Retry/time.Millisecond)) + "\n\n")); err != nil {
		return
	}
	err = st.Run(r.Context(), sink)
	reason := "client closed"
	switch {
	case errors.Is(err, hub.ErrShutdown):
		reason = "shutdown"
		_ = sink.write([]byte(": relay shutting down, reconnect\n\n"))
		_ = rc.Flush()
	case errors.Is(err, hub.ErrSlowConsumer):
		reason = "slow consumer"
		_ = sink.write([]byte(": closed: slow consumer, resume with Last-Event-ID\n\n"))
		_ = rc.Flush()
	case errors.Is(err, hub.ErrSubscriberGone):
		reason = "subscriber deleted"
		_ = sink.write([]byte(": closed: subscriber no longer exists\n\n"))
		_ = rc.Flush()
	case err != nil && !errors.Is(err, context.Canceled):
		reason = "error"
		h.Log.Warn("stream failed", "transport", "sse", "user", subscriber, "err", err)
	}
	h.Log.Info("stream closed", "transport", "sse", "user", subscriber, "reason", reason, "duration", time.Since(start).Round(time.Millisecond))
}

type sink struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (s *sink) write(b []byte) error {
	if s.timeout > 0 {
		// A client that stops reading blocks the write until this deadline;
		// its queue meanwhile overflows and the hub drops it.
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	_, err := s.w.Write(b)
	return err
}

func (s *sink) Event(m *hub.Message) error { return s.write(m.SSE()) }

func (s *sink) Reset(at eventlog.ID) error {
	return s.write([]byte("id: " + at.String() + "\nevent: reset\ndata: {\"reason\":\"events after your last id are no longer retained; reload\"}\n\n"))
}

func (s *sink) Heartbeat() error { return s.write([]byte(": ping\n\n")) }

func (s *sink) Flush() error { return s.rc.Flush() }
