// Package graphql serves GraphQL subscriptions over WebSocket (GET /graphql)
// in both protocols GraphQL clients speak, chosen by subprotocol:
// graphql-transport-ws (the graphql-ws library, Apollo Client's
// GraphQLWsLink) and the legacy graphql-ws (subscriptions-transport-ws,
// Apollo's WebSocketLink).
//
// The schema is derived from the relay's topics (package schema); each
// subscription is one stream.Stream admitted through the same stream.Gate
// as /events and /ws, so it has the same filters, limits, metrics, replay
// and guarantees: `after` is the resume id, and each result carries its
// event id in extensions.id. Because a GraphQL client may send its token in
// connection_init, after the upgrade, admission happens then
// (Gate.Authorize at connection_init, Gate.AdmitAs for each subscription).
//
// A connection has one goroutine of its own, reading the client's frames;
// its subscriptions hold none while they wait for events (deliver.go).
package graphql

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pgrelay/pgrelay/relay/graphql/schema"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/stream"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// Subprotocols, in the order the relay prefers them.
const (
	// TransportWS is the graphql-ws library's protocol.
	TransportWS = "graphql-transport-ws"
	// LegacyWS is subscriptions-transport-ws's protocol.
	LegacyWS = "graphql-ws"
)

// Close codes. The 44xx codes are graphql-transport-ws's; the legacy
// protocol defines none, and gets the same ones. 1012, 4000, 4403 and 1011
// for a stream the relay ends are those of GET /ws.
const (
	CloseBadMessage        = 4400 // a message the protocol does not allow
	CloseUnauthorized      = 4401 // no or bad token, a subscribe before the ack, or the token expired
	CloseForbidden         = 4403 // the token's subject is not a subscriber (or was deleted)
	CloseInitTimeout       = 4408 // no connection_init within the init timeout
	CloseDuplicateID       = 4409 // a subscribe with the id of a running subscription
	CloseTooManyInits      = 4429 // a second connection_init
	CloseSlowConsumer      = ws.CloseSlowConsumer
	CloseShutdown          = ws.CloseShutdown
	CloseMessageTooBig     = ws.CloseMessageTooBig
	CloseTryAgainLater     = 1013 // the relay cannot serve now (full, database unreachable)
	CloseInternalError     = ws.CloseInternalError
	CloseProtocolViolation = ws.CloseProtocolError
)

// Handler serves GET /graphql.
type Handler struct {
	// Gate admits subscriptions, as for every transport; Transport names
	// this one ("graphql") to it.
	Gate      *stream.Gate
	Transport stream.Transport
	// Schema gives the schema of the relay's topics.
	Schema *schema.Cache
	Log    *slog.Logger
	// WriteTimeout bounds one write to a client, and the wait for its
	// answer to a keep-alive ping.
	WriteTimeout time.Duration
	// Heartbeat is the interval of keep-alive pings (and of the legacy
	// protocol's ka messages).
	Heartbeat time.Duration
	// InitTimeout is how long a client may take to send connection_init.
	InitTimeout time.Duration
	// MaxMessage bounds one message from a client, in bytes (close 1009).
	MaxMessage int
	// MaxOperations bounds the subscriptions of one connection.
	MaxOperations int
	// Connections caps the acknowledged connections, in total and per
	// subscriber, apart from their subscriptions (each counted as a stream
	// by the Gate's Limiter): a connection holds a socket and a goroutine
	// even while it subscribes to nothing. Nil: no cap.
	Connections *limit.Limiter
	// OriginPatterns are the browser origins allowed besides the relay's
	// own, as for GET /ws.
	OriginPatterns []string

	writers sync.Pool // *bufio.Writer
	shapes  shapes

	mu       sync.Mutex
	conns    map[*conn]struct{}
	stopping bool
	open     stream.Drain // len(conns), for shutdown to wait on
}

// Defaults for the bounds left zero.
const (
	defaultMaxMessage    = 64 << 10
	defaultMaxOperations = 64
	defaultInitTimeout   = 10 * time.Second
)

var (
	errNotWebSocket = errors.New("this endpoint speaks GraphQL over WebSocket: send an Upgrade: websocket request with the subprotocol graphql-transport-ws or graphql-ws")
	errNoProtocol   = errors.New("GET /graphql speaks the WebSocket subprotocols graphql-transport-ws (graphql-ws, Apollo GraphQLWsLink) and graphql-ws (subscriptions-transport-ws); the handshake offered neither in Sec-WebSocket-Protocol")
	errNotServing   = errors.New("not serving GraphQL connections now (shutting down?); retry shortly")
)

// Run serves until ctx is done, then closes every connection with 1012.
// Wait waits for their close handshakes.
func (h *Handler) Run(ctx context.Context) error {
	<-ctx.Done()
	h.mu.Lock()
	h.stopping = true
	conns := make([]*conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.end(closeFor(CloseShutdown, ws.ReasonShutdown), errShutdown)
	}
	return nil
}

// Wait blocks until every connection has closed, or ctx is done.
func (h *Handler) Wait(ctx context.Context) error {
	return h.open.Wait(ctx, "graphql connections")
}

func (h *Handler) track(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping {
		return false
	}
	if h.conns == nil {
		h.conns = map[*conn]struct{}{}
	}
	h.conns[c] = struct{}{}
	h.open.Add()
	return true
}

func (h *Handler) untrack(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; ok {
		delete(h.conns, c)
		h.open.Done()
	}
}

func (h *Handler) refuse(w http.ResponseWriter, r *stream.Refusal) {
	status := h.Gate.Refused(h.Transport, "", r)
	for k, v := range r.Header {
		w.Header()[k] = v
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "2")
	}
	stream.WriteError(w, status, r)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		h.refuse(w, &stream.Refusal{Status: http.StatusUpgradeRequired, Header: http.Header{"Upgrade": {"websocket"}}, Err: errNotWebSocket})
		return
	}
	proto := negotiate(r.Header.Values("Sec-WebSocket-Protocol"))
	if proto == "" {
		h.refuse(w, &stream.Refusal{Status: http.StatusBadRequest, Err: errNoProtocol})
		return
	}
	h.mu.Lock()
	stopping := h.stopping
	h.mu.Unlock()
	if stopping {
		h.refuse(w, &stream.Refusal{Status: http.StatusServiceUnavailable, Err: errNotServing})
		return
	}
	w.Header().Set("Sec-WebSocket-Protocol", proto)
	nc, early, err := ws.Upgrade(w, r, h.OriginPatterns, h.writeTimeout())
	if err != nil {
		h.Log.Info("stream refused", "transport", h.Transport.Name, "reason", "websocket handshake failed", "err", err)
		return
	}
	c := newConn(h, r, nc, early, proto == LegacyWS)
	if !h.track(c) {
		c.end(closeFor(CloseShutdown, ws.ReasonShutdown), errShutdown)
		c.finish()
		return
	}
	defer h.untrack(c)
	c.serve()
}

// negotiate picks the subprotocol to speak from a handshake's offers.
func negotiate(offers []string) string {
	var has = map[string]bool{}
	for _, v := range offers {
		for _, p := range strings.Split(v, ",") {
			has[strings.TrimSpace(p)] = true
		}
	}
	for _, p := range []string{TransportWS, LegacyWS} {
		if has[p] {
			return p
		}
	}
	return ""
}

// headerHasToken reports whether a comma-separated header of h lists token.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (h *Handler) writer(w io.Writer) *bufio.Writer {
	if bw, ok := h.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 16<<10)
}

func (h *Handler) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	h.writers.Put(bw)
}

func (h *Handler) writeTimeout() time.Duration {
	if h.WriteTimeout > 0 {
		return h.WriteTimeout
	}
	return 10 * time.Second
}

func (h *Handler) heartbeat() time.Duration {
	if h.Heartbeat > 0 {
		return h.Heartbeat
	}
	return 10 * time.Second
}

func (h *Handler) initTimeout() time.Duration {
	if h.InitTimeout > 0 {
		return h.InitTimeout
	}
	return defaultInitTimeout
}

func (h *Handler) maxMessage() int {
	if h.MaxMessage > 0 {
		return h.MaxMessage
	}
	return defaultMaxMessage
}

func (h *Handler) maxOperations() int {
	if h.MaxOperations > 0 {
		return h.MaxOperations
	}
	return defaultMaxOperations
}
