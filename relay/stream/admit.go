package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
)

// Gate admits HTTP requests to streams the same way for every transport:
// authenticate, parse the parameters, check the transport's own conditions,
// take a place under the connection caps, open the stream. A refusal is
// answered with the same JSON body and logged the same way whichever
// transport it came through; a transport only frames bytes.
type Gate struct {
	Auth    *auth.Verifier
	Opener  *Opener
	Limiter *limit.Limiter
	// Opening paces the work of opening streams (filter load, replay
	// start): a stream beyond its bound is refused at once with 503 and
	// Retry-After rather than left to time out behind the others. Nil
	// paces nothing.
	Opening *limit.Opening
	Log     *slog.Logger
}

// Transport describes the transport a request arrived on.
type Transport struct {
	// Name is the transport in logs and metrics ("sse", "ws").
	Name string
	// Observer, if set, is told of the stream's deliveries.
	Observer Observer
	// Connected, if set, is called with +1 when a stream opens and -1 when
	// it ends.
	Connected func(delta int)
	// Check, if set, refuses requests the transport cannot serve, before
	// any place is taken; a *Refusal says how to answer.
	Check func(r *http.Request) error
	// Refusals, if set, counts refusals by reason (RefusalReason).
	Refusals func(reason string)
}

// Admitted is an open stream that went through a Gate. End it exactly once.
type Admitted struct {
	*Stream
	Request Request

	transport Transport
	log       *slog.Logger
	opened    time.Time
	release   func()
}

// Admit opens the stream r asks for, or answers r with why not and returns
// false. The stream's context is r's.
func (g *Gate) Admit(w http.ResponseWriter, r *http.Request, t Transport) (*Admitted, bool) {
	id, err := g.Auth.Authenticate(r)
	if err != nil {
		g.refuse(w, t, "", err)
		return nil, false
	}
	req, err := ParseRequest(r)
	if err != nil {
		g.refuse(w, t, id.Subject, err)
		return nil, false
	}
	if t.Check != nil {
		if err := t.Check(r); err != nil {
			g.refuse(w, t, id.Subject, err)
			return nil, false
		}
	}
	adm, err := g.open(r.Context(), id, req, t)
	if err != nil {
		g.refuse(w, t, id.Subject, err)
		return nil, false
	}
	return adm, true
}

// AdmitAs opens the stream req asks for as id, for a transport that learns
// who its client is only after its own handshake (GraphQL's
// connection_init): the same limits, opening and log lines as Admit. A
// refusal is logged here and returned; the transport tells its client in its
// own terms, which Status and LogReason classify. The stream's context is
// ctx.
func (g *Gate) AdmitAs(ctx context.Context, id auth.Identity, req Request, t Transport) (*Admitted, error) {
	adm, err := g.open(ctx, id, req, t)
	if err != nil {
		g.Refused(t, id.Subject, err)
	}
	return adm, err
}

// Authorize checks that id, obtained after a transport's own handshake,
// names a subscriber (ErrUnknownSubscriber if not), so that a connection
// that will open streams later is refused at once; a refusal is logged and
// returned as AdmitAs does.
func (g *Gate) Authorize(ctx context.Context, id auth.Identity, t Transport) error {
	// A filter load like a fresh stream's: it counts toward the bound as
	// they do, or a storm of GraphQL connections would bypass it.
	done, err := g.Opening.Enter()
	var f filter.Filter
	if err == nil {
		f, _, err = g.Opener.loadFilter(ctx, id.Subject)
		done()
	}
	if err == nil && !f.Exists {
		err = fmt.Errorf("%w: %q", ErrUnknownSubscriber, id.Subject)
	}
	if err != nil {
		g.Refused(t, id.Subject, err)
	}
	return err
}

func (g *Gate) open(ctx context.Context, id auth.Identity, req Request, t Transport) (*Admitted, error) {
	req.Subscriber, req.Expires, req.Observer = id.Subject, id.Expires, t.Observer
	release, err := g.Limiter.Acquire(req.Subscriber)
	if err != nil {
		return nil, err
	}
	// After the caps, which cost nothing to check: a stream they refuse
	// never takes a turn from one they would admit. Only a stream whose
	// replay reads the log takes a turn, which bounds those reads on the
	// pool; a fresh one loads its filter only, and one resuming from the
	// window of the recent log loads its filter and replays from memory
	// (its horizon read shared with the others), so in a storm it is
	// admitted as fast as filters load instead of queueing behind turns
	// until clients are refused and come back to try again.
	var started func()
	if req.After != nil && !g.Opener.ReplaysFromWindow(*req.After) {
		started, err = g.Opening.Acquire(ctx)
	} else {
		started, err = g.Opening.Enter()
	}
	if err != nil {
		release()
		return nil, err
	}
	st, err := g.Opener.Open(ctx, req)
	if err != nil {
		started()
		release()
		return nil, err
	}
	st.started = started
	if t.Connected != nil {
		t.Connected(1)
	}
	g.Log.Info("stream opened", "transport", t.Name, "user", req.Subscriber, "topics", req.Topics, "resume", req.After != nil)
	return &Admitted{Stream: st, Request: req, transport: t, log: g.Log, opened: time.Now(), release: release}, nil
}

// retryAfter is what clients refused for a passing reason (a full relay,
// an unreachable database) are told to wait.
const retryAfter = 2 * time.Second

// refuse answers a request that gets no stream, and logs why: never the
// token or what the client sent, only the kind of problem.
func (g *Gate) refuse(w http.ResponseWriter, t Transport, user string, err error) {
	status := g.Refused(t, user, err)
	var r *Refusal
	if errors.As(err, &r) {
		for k, v := range r.Header {
			w.Header()[k] = v
		}
	}
	if status == http.StatusServiceUnavailable {
		wait := retryAfter
		if errors.Is(err, limit.ErrBusy) {
			wait = g.Opening.RetryAfter()
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
	}
	WriteError(w, status, err)
}

// Refused logs a refusal, decided here or by a transport after its own
// handshake (a bad token in a GraphQL connection_init), and returns the HTTP
// status that answers it: a relay failure (almost always the database being
// unreachable) is 503, so clients come back rather than think they did
// something wrong.
func (g *Gate) Refused(t Transport, user string, err error) int {
	if t.Refusals != nil {
		t.Refusals(RefusalReason(err))
	}
	status := Status(err)
	if errors.Is(err, context.Canceled) {
		// The client left while its stream was opening (perhaps waiting
		// for its turn in a storm): nothing failed, and nobody reads the
		// answer.
		g.Log.Info("stream refused", "transport", t.Name, "user", user, "reason", "client left while the stream was opening")
		return http.StatusServiceUnavailable
	}
	if status == http.StatusInternalServerError {
		g.Log.Error("open event stream", "transport", t.Name, "user", user, "err", err)
		return http.StatusServiceUnavailable
	}
	g.Log.Info("stream refused", "transport", t.Name, "user", user, "status", status, "reason", LogReason(err))
	return status
}

// Refuse ends a stream that was admitted but cannot be served after all
// (the transport's handshake failed), logging why.
func (a *Admitted) Refuse(reason string, err error) {
	a.log.Info("stream refused", "transport", a.transport.Name, "user", a.Request.Subscriber, "reason", reason, "err", err)
	a.close()
}

// End closes the stream, gives its place back and logs why it ended, which
// err says (see Ending).
func (a *Admitted) End(err error) {
	e := Ending(err)
	if e == EndError {
		a.log.Warn("stream failed", "transport", a.transport.Name, "user", a.Request.Subscriber, "err", err)
	}
	a.close()
	a.log.Info("stream closed", "transport", a.transport.Name, "user", a.Request.Subscriber, "reason", e.String(),
		"duration", time.Since(a.opened).Round(time.Millisecond))
}

func (a *Admitted) close() {
	a.Stream.Close()
	a.release()
	if a.transport.Connected != nil {
		a.transport.Connected(-1)
	}
}

// End is why a stream ended, as every transport tells its client and the
// log.
type End int

// Why streams end.
const (
	// EndClientClosed: the client went away (or the request was cancelled).
	EndClientClosed End = iota
	// EndShutdown: the relay is shutting down; reconnect, to any relay.
	EndShutdown
	// EndSlowConsumer: the client fell too far behind; resume with the last
	// event id.
	EndSlowConsumer
	// EndSubscriberGone: the subscriber was deleted.
	EndSubscriberGone
	// EndTokenExpired: the token the stream was opened with expired;
	// reconnect with a fresh one and the last event id.
	EndTokenExpired
	// EndUnresponsive: the client stopped answering keep-alives.
	EndUnresponsive
	// EndError: the relay failed.
	EndError
)

// ErrClientGone is how a transport tells Ending that its client went away.
var ErrClientGone = errors.New("the client closed the connection")

// ErrUnresponsive is how a transport tells Ending that its client stopped
// answering keep-alives.
var ErrUnresponsive = errors.New("the client stopped answering keep-alives")

// Ending classifies why a stream ended from the error it ended with.
func Ending(err error) End {
	switch {
	case errors.Is(err, hub.ErrShutdown):
		return EndShutdown
	case errors.Is(err, hub.ErrSlowConsumer), errors.Is(err, os.ErrDeadlineExceeded):
		return EndSlowConsumer
	case errors.Is(err, hub.ErrSubscriberGone):
		return EndSubscriberGone
	case errors.Is(err, hub.ErrTokenExpired):
		return EndTokenExpired
	case errors.Is(err, ErrUnresponsive):
		return EndUnresponsive
	case err == nil, errors.Is(err, ErrClientGone), errors.Is(err, context.Canceled), errors.Is(err, hub.ErrClosed):
		return EndClientClosed
	default:
		return EndError
	}
}

// String is the reason as the relay logs it.
func (e End) String() string {
	switch e {
	case EndClientClosed:
		return "client closed"
	case EndShutdown:
		return "shutdown"
	case EndSlowConsumer:
		return "slow consumer"
	case EndSubscriberGone:
		return "subscriber deleted"
	case EndTokenExpired:
		return "token expired"
	case EndUnresponsive:
		return "no pong"
	default:
		return "error"
	}
}
