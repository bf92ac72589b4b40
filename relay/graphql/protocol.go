package graphql

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/stream"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// message is what each protocol message shares.
type message struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`
	Payload json.RawMessage `json:"payload"`
}

// handle acts on one message from the client.
func (c *conn) handle(b []byte) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil || m.Type == "" {
		c.bad("Invalid message received: a JSON object with a type")
		return
	}
	switch {
	case m.Type == "connection_init":
		c.init(m.Payload)
	case !c.legacy && m.Type == "ping":
		c.reply(pongMessage(m.Payload))
	case !c.legacy && m.Type == "pong":
	case !c.legacy && m.Type == "subscribe", c.legacy && m.Type == "start":
		c.subscribe(m)
	case !c.legacy && m.Type == "complete", c.legacy && m.Type == "stop":
		if id, ok := c.opID(m.ID); ok {
			c.stop(id)
		}
	case c.legacy && m.Type == "connection_terminate":
		c.end(closeFor(1000, "connection_terminate"), stream.ErrClientGone)
	default:
		c.bad(fmt.Sprintf("Invalid message received: type %q is not part of the %s protocol", truncate(m.Type), c.protocol()))
	}
}

func (c *conn) protocol() string {
	if c.legacy {
		return LegacyWS
	}
	return TransportWS
}

// bad closes the connection for a message the protocol does not allow.
func (c *conn) bad(reason string) {
	c.end(closeFor(CloseBadMessage, reason), stream.ErrClientGone)
}

func (c *conn) opID(raw json.RawMessage) (string, bool) {
	var id string
	if err := json.Unmarshal(raw, &id); err != nil || id == "" || len(id) > maxID {
		c.bad(fmt.Sprintf("Invalid message received: id must be a non-empty string of at most %d bytes", maxID))
		return "", false
	}
	return id, true
}

// init authenticates the connection: with the token of its connection_init
// payload, or else that of the handshake (header or access_token).
func (c *conn) init(payload json.RawMessage) {
	c.mu.Lock()
	again := c.inited
	c.inited = true
	c.mu.Unlock()
	if again {
		c.end(closeFor(CloseTooManyInits, "Too many initialisation requests"), stream.ErrClientGone)
		return
	}
	id, err := c.authenticate(payload)
	if err != nil {
		c.h.Gate.Refused(c.h.Transport, "", err)
	} else {
		err = c.h.Gate.Authorize(c.ctx, id, c.h.Transport)
	}
	var release func()
	if err == nil {
		if release, err = c.h.Connections.Acquire(id.Subject); err != nil {
			c.h.Gate.Refused(c.h.Transport, id.Subject, err)
		}
	}
	if err != nil {
		c.refused(err)
		return
	}
	c.mu.Lock()
	c.id, c.acked, c.release = id, true, release
	c.mu.Unlock()
	if !id.Expires.IsZero() {
		c.after(time.Until(id.Expires), c.tokenExpired)
	}
	c.reply([]byte(`{"type":"connection_ack"}`))
	if c.legacy {
		c.reply([]byte(`{"type":"ka"}`))
	}
}

// refused ends a connection whose connection_init was refused.
func (c *conn) refused(err error) {
	status := stream.Status(err)
	code := uint16(CloseTryAgainLater)
	reason := "temporarily unavailable; retry shortly"
	switch {
	case status == http.StatusUnauthorized, status == http.StatusBadRequest:
		code, reason = CloseUnauthorized, "Unauthorized: "+err.Error()
	case status == http.StatusForbidden:
		code, reason = CloseForbidden, "Forbidden: the token's subject is not a subscriber"
	case errors.Is(err, hub.ErrShutdown):
		code, reason = CloseShutdown, ws.ReasonShutdown
	case errors.Is(err, limit.ErrUserFull), errors.Is(err, limit.ErrRelayFull), errors.Is(err, limit.ErrBusy):
		reason = err.Error()
	}
	if c.legacy {
		_ = c.send(connectionError(reason))
	}
	c.end(closeFor(code, reason), err)
}

// authenticate finds the connection's token and checks it.
func (c *conn) authenticate(payload json.RawMessage) (auth.Identity, error) {
	token, err := payloadToken(payload)
	if err != nil {
		return auth.Identity{}, err
	}
	if token == "" {
		return c.h.Gate.Auth.Authenticate(c.r)
	}
	if h := handshakeToken(c.r); h != "" && h != token {
		return auth.Identity{}, fmt.Errorf("%w: different tokens in the connection_init payload and the handshake", auth.ErrBadToken)
	}
	return c.h.Gate.Auth.VerifyIdentity(token)
}

func handshakeToken(r *http.Request) string {
	if _, rest, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok {
		return strings.TrimSpace(rest)
	}
	return r.URL.Query().Get("access_token")
}

// payloadToken reads the token of a connection_init payload:
// {"authorization": "Bearer <jwt>"} (any case of the key, also under
// "headers", as clients that forward HTTP headers send it) or
// {"access_token": "<jwt>"}. "" means the payload carries none.
func payloadToken(payload json.RawMessage) (string, error) {
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 || string(payload) == "null" {
		return "", nil
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(payload, &p); err != nil {
		return "", fmt.Errorf("%w: the connection_init payload must be a JSON object", auth.ErrBadToken)
	}
	if h, ok := p["headers"]; ok {
		var hp map[string]json.RawMessage
		if json.Unmarshal(h, &hp) == nil {
			for k, v := range hp {
				if _, ok := p[k]; !ok {
					p[k] = v
				}
			}
		}
	}
	var bearer, raw string
	for k, v := range p {
		var s string
		switch strings.ToLower(k) {
		case "authorization":
			if json.Unmarshal(v, &s) != nil {
				return "", fmt.Errorf("%w: authorization in the connection_init payload must be a string \"Bearer <jwt>\"", auth.ErrBadToken)
			}
			scheme, rest, ok := strings.Cut(strings.TrimSpace(s), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
				return "", fmt.Errorf("%w: authorization in the connection_init payload must be \"Bearer <jwt>\"", auth.ErrBadToken)
			}
			bearer = strings.TrimSpace(rest)
		case "access_token":
			if json.Unmarshal(v, &s) != nil || s == "" {
				return "", fmt.Errorf("%w: access_token in the connection_init payload must be a non-empty string", auth.ErrBadToken)
			}
			raw = s
		}
	}
	if bearer != "" && raw != "" && bearer != raw {
		return "", fmt.Errorf("%w: different tokens in authorization and access_token", auth.ErrBadToken)
	}
	if bearer != "" {
		return bearer, nil
	}
	return raw, nil
}

// subscribe starts an operation: a query is answered at once, a
// subscription opens a stream.
func (c *conn) subscribe(m message) {
	c.mu.Lock()
	acked := c.acked
	c.mu.Unlock()
	if !acked {
		c.end(closeFor(CloseUnauthorized, "Unauthorized: send connection_init first"), stream.ErrClientGone)
		return
	}
	id, ok := c.opID(m.ID)
	if !ok {
		return
	}
	var req request
	if err := json.Unmarshal(m.Payload, &req); err != nil || req.Query == "" {
		c.bad("Invalid message received: the payload must be an object with a query string")
		return
	}
	c.mu.Lock()
	_, running := c.ops[id]
	n := len(c.ops)
	c.mu.Unlock()
	if running {
		if !c.legacy {
			c.end(closeFor(CloseDuplicateID, "Subscriber for "+truncate(id)+" already exists"), stream.ErrClientGone)
			return
		}
		// As subscriptions-transport-ws's server does: the new start
		// replaces the running one.
		c.stop(id)
		n--
	}
	s, err := c.h.Schema.Get(c.ctx)
	if err != nil {
		c.h.Log.Error("load the graphql schema", "err", err)
		c.opError(id, errorList("temporarily unavailable; retry shortly", "UNAVAILABLE"))
		return
	}
	o, errs := compile(s, req)
	if len(errs) > 0 {
		b, _ := json.Marshal(errs)
		c.opError(id, b)
		return
	}
	if o.Result != nil {
		c.result(id, o.Result)
		c.reply(completeMessage(id))
		return
	}
	if n >= c.h.maxOperations() {
		c.opError(id, errorList(fmt.Sprintf("at most %d subscriptions on one connection", c.h.maxOperations()), "TOO_MANY_SUBSCRIPTIONS"))
		return
	}
	c.mu.Lock()
	ident := c.id
	c.mu.Unlock()
	adm, err := c.h.Gate.AdmitAs(c.ctx, ident, stream.Request{Topics: []string{o.Topic.Name}, After: o.After}, c.h.Transport)
	if err != nil {
		c.admitFailed(id, err)
		return
	}
	c.start(&op{id: id, adm: adm, sink: &sink{c: c, id: id, op: o, shape: c.h.shapes.acquire(o)}})
}

// admitFailed tells the client why a subscription was not opened: the
// subscriber's deletion ends the connection, anything else the operation.
func (c *conn) admitFailed(id string, err error) {
	status := stream.Status(err)
	switch {
	case status == http.StatusForbidden:
		c.refused(err)
	case status >= 500 && !stream.Unavailable(err):
		c.opError(id, errorList("temporarily unavailable; retry shortly", "UNAVAILABLE"))
	case status == http.StatusTooManyRequests:
		c.opError(id, errorList(err.Error(), "TOO_MANY_SUBSCRIPTIONS"))
	case status >= 500:
		c.opError(id, errorList(err.Error(), "UNAVAILABLE"))
	default:
		c.opError(id, errorList(err.Error(), "BAD_REQUEST"))
	}
}

// opError tells the client an operation failed; errs is a JSON array of
// GraphQL errors. graphql-transport-ws has an error message for it; the
// legacy protocol's servers send the errors as a result, then complete.
func (c *conn) opError(id string, errs []byte) {
	if c.legacy {
		c.reply(envelope(id, "data", append(append([]byte(`{"errors":`), errs...), '}')))
		c.reply(completeMessage(id))
		return
	}
	c.reply(envelope(id, "error", errs))
}

// result sends one execution result of an operation.
func (c *conn) result(id string, payload []byte) {
	c.reply(envelope(id, c.nextType(), payload))
}

func (c *conn) nextType() string {
	if c.legacy {
		return "data"
	}
	return "next"
}

func envelope(id, typ string, payload []byte) []byte {
	b := append([]byte(`{"id":`), mustJSON(id)...)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","payload":`...)
	b = append(b, payload...)
	return append(b, '}')
}

func completeMessage(id string) []byte {
	return append(append([]byte(`{"id":`), mustJSON(id)...), `,"type":"complete"}`...)
}

func pongMessage(payload json.RawMessage) []byte {
	if len(bytes.TrimSpace(payload)) == 0 {
		return []byte(`{"type":"pong"}`)
	}
	return append(append([]byte(`{"type":"pong","payload":`), payload...), '}')
}

func connectionError(msg string) []byte {
	return append(append([]byte(`{"type":"connection_error","payload":{"message":`), mustJSON(msg)...), `}}`...)
}

func errorList(msg, code string) []byte {
	return mustJSON([]map[string]any{{"message": msg, "extensions": map[string]any{"code": code}}})
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func truncate(s string) string {
	if len(s) > 48 {
		return s[:48] + "…"
	}
	return s
}

// sink writes one subscription's results.
type sink struct {
	c       *conn
	id      string
	op      *operation
	shape   *shape
	scratch []byte
}

func (s *sink) message(build func([]byte) ([]byte, error)) error {
	b := append(s.scratch[:0], `{"id":`...)
	b = append(b, mustJSON(s.id)...)
	b = append(b, `,"type":"`...)
	b = append(b, s.c.nextType()...)
	b = append(b, `","payload":`...)
	b, err := build(b)
	if err != nil {
		return err
	}
	b = append(b, '}')
	if cap(b) <= 64<<10 {
		s.scratch = b // large rows' buffers are not kept
	}
	return writeErr(s.c.write(b))
}

// writeErr says why a write failed as Stream.Run's caller classifies it: a
// timeout is a slow consumer (Classify), anything else the client leaving.
func writeErr(err error) error {
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errClosing) {
		return err
	}
	return fmt.Errorf("%w: write: %w", stream.ErrClientGone, err)
}

func (s *sink) Event(m *hub.Message) error {
	return s.message(func(b []byte) ([]byte, error) { return s.op.encode(b, m, s.shape, &s.c.h.shapes) })
}

func (s *sink) Reset(at eventlog.ID) error {
	return s.message(func(b []byte) ([]byte, error) { return s.op.resetResult(b, at), nil })
}

// Heartbeat is left to the connection's keep-alive.
func (s *sink) Heartbeat() error { return nil }

func (s *sink) Flush() error { return writeErr(s.c.flush()) }
