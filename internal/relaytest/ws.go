package relaytest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/streamclient"
	"github.com/pgrelay/pgrelay/internal/wsmessage"
)

// WSURL returns the ws:// URL of GET /ws on baseURL with opts as query
// parameters.
func WSURL(baseURL string, opts SSEOptions) string {
	return wsmessage.URL(baseURL, opts.Topics, opts.LastEventID, nil)
}

// WS is a GET /ws stream read in the background into Events: a message
// {"id","topic","data"} becomes Event{ID, Event: topic, Data}, and a reset
// {"type":"reset",…} becomes Event{ID, Event: "reset", Data}.
type WS struct {
	// Conn writes to the relay and closes the connection.
	Conn WSConn
	// Events receives every message decoded.
	Events chan Event
	// Raw receives every message as sent.
	Raw chan []byte
	// Closed receives the error that ended reading: a websocket.CloseError
	// (read with websocket.CloseStatus) when the relay closed with a code.
	Closed chan error
}

// WSConn is what a test does with a WebSocket besides reading it. Both
// streamclient's WS (through SubscribeWS) and github.com/coder/websocket's
// Conn (through DialWS) have it.
type WSConn interface {
	Write(ctx context.Context, typ websocket.MessageType, p []byte) error
	Close(code websocket.StatusCode, reason string) error
}

// SubscribeWS opens GET /ws on baseURL as token's subscriber with
// streamclient's WebSocket client and reads from it until it closes.
func SubscribeWS(t testing.TB, baseURL, token string, opts SSEOptions) *WS {
	t.Helper()
	conn, err := dialStreamWS(t, baseURL, token, opts)
	if err != nil {
		t.Fatal(err)
	}
	return readStreamWS(conn)
}

// dialStreamWS opens GET /ws with streamclient without reading it: a
// refusal is a *streamclient.RejectedError.
func dialStreamWS(t testing.TB, baseURL, token string, opts SSEOptions) (*streamclient.WS, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := WSURL(baseURL, opts)
	conn, err := streamclient.OpenWS(ctx, nil, u, streamclient.Options{Token: token})
	var rej *streamclient.RejectedError
	if errors.As(err, &rej) {
		return nil, err
	}
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, nil
}

func readStreamWS(conn *streamclient.WS) *WS {
	return readWS(streamConn{conn}, func() ([]byte, error) {
		b, err := conn.ReadMessage()
		var ce *streamclient.ClosedError
		if errors.As(err, &ce) {
			// One way to read close codes in every test, whichever client
			// connected.
			err = websocket.CloseError{Code: websocket.StatusCode(ce.Code), Reason: ce.Reason}
		}
		return append([]byte(nil), b...), err
	})
}

// streamConn is streamclient's WS as a WSConn.
type streamConn struct{ ws *streamclient.WS }

func (c streamConn) Write(_ context.Context, typ websocket.MessageType, p []byte) error {
	if typ != websocket.MessageText {
		return fmt.Errorf("write %v message: the relay's clients send text only", typ)
	}
	return c.ws.WriteText(p)
}

func (c streamConn) Close(code websocket.StatusCode, reason string) error {
	return c.ws.CloseWith(int(code), reason)
}

// DialWS opens GET /ws on baseURL as token's subscriber with
// github.com/coder/websocket, an independent implementation of RFC 6455,
// without reading from it: for tests of the protocol itself that need what
// that library offers (a hook on pings, a connection never read). The
// connection is closed when the test ends.
func DialWS(t testing.TB, baseURL, token string, opts SSEOptions, dial *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	if dial == nil {
		dial = &websocket.DialOptions{}
	}
	if dial.HTTPHeader == nil {
		dial.HTTPHeader = http.Header{}
	}
	dial.HTTPHeader.Set("Authorization", "Bearer "+token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := WSURL(baseURL, opts)
	conn, resp, err := websocket.Dial(ctx, u, dial)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dial %s: %s %v", u, status, err)
	}
	conn.SetReadLimit(streamclient.DefaultMaxMessage)
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn
}

// ReadWS starts recording what conn (from DialWS) receives.
func ReadWS(t testing.TB, conn *websocket.Conn) *WS {
	return readWS(conn, func() ([]byte, error) {
		_, b, err := conn.Read(context.Background())
		return b, err
	})
}

// readWS records the messages read returns until it fails.
func readWS(conn WSConn, read func() ([]byte, error)) *WS {
	w := &WS{Conn: conn, Events: make(chan Event, 100000), Raw: make(chan []byte, 100000), Closed: make(chan error, 1)}
	go func() {
		for {
			b, err := read()
			if err != nil {
				w.Closed <- err
				return
			}
			w.Raw <- b
			msg, err := wsmessage.Decode(b)
			if err != nil {
				w.Events <- Event{Event: "invalid", Data: string(b)}
				continue
			}
			e := Event{ID: msg.ID, Event: msg.Topic, Data: string(msg.Data)}
			if msg.Type != "" {
				e.Event = msg.Type
			}
			w.Events <- e
		}
	}()
	return w
}

// Close ends the connection with a normal closure.
func (w *WS) Close() { _ = w.Conn.Close(websocket.StatusNormalClosure, "bye") }

// Collect waits until n events arrived (failing after timeout) and returns
// them.
func (w *WS) Collect(t testing.TB, n int, timeout time.Duration) []Event {
	t.Helper()
	out, err := w.CollectUnlessClosed(t, n, timeout)
	if err != nil {
		t.Fatalf("connection closed after %d of %d events: %v; ids: %v", len(out), n, err, eventIDs(out))
	}
	return out
}

// CollectUnlessClosed waits until n events arrived and returns them, or
// returns what arrived and the reason if the relay closes the connection
// first. It fails the test after timeout.
func (w *WS) CollectUnlessClosed(t testing.TB, n int, timeout time.Duration) ([]Event, error) {
	t.Helper()
	out := make([]Event, 0, n)
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case e := <-w.Events:
			out = append(out, e)
		case err := <-w.Closed:
			return w.drain(out), err
		case <-deadline:
			t.Fatalf("got %d of %d events within %s; ids: %v", len(out), n, timeout, eventIDs(out))
		}
	}
	return out, nil
}

// drain appends the events still queued once reading has stopped: by then
// everything received is queued.
func (w *WS) drain(out []Event) []Event {
	for {
		select {
		case e := <-w.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func eventIDs(events []Event) []string {
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	return ids
}

// Quiet asserts that no event arrives for d.
func (w *WS) Quiet(t testing.TB, d time.Duration) {
	t.Helper()
	quiet(t, w.Events, d)
}

// CollectUnlessEnded is CollectUnlessClosed with the reason as an End.
func (w *WS) CollectUnlessEnded(t testing.TB, n int, timeout time.Duration) ([]Event, End, bool) {
	t.Helper()
	events, err := w.CollectUnlessClosed(t, n, timeout)
	if err == nil {
		return events, End{}, false
	}
	return events, closeEnd(err), true
}

// WaitEnd is WaitClosed with the reason as an End.
func (w *WS) WaitEnd(t testing.TB, timeout time.Duration) ([]Event, End) {
	t.Helper()
	events, err := w.WaitClosed(t, timeout)
	return events, closeEnd(err)
}

func closeEnd(err error) End {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return End{Code: int(ce.Code), Reason: ce.Reason}
	}
	return End{}
}

// WaitClosed waits up to timeout for the connection to end and returns the
// close error, after draining the events received before it into the
// returned slice.
func (w *WS) WaitClosed(t testing.TB, timeout time.Duration) ([]Event, error) {
	t.Helper()
	var events []Event
	deadline := time.After(timeout)
	for {
		select {
		case e := <-w.Events:
			events = append(events, e)
		case err := <-w.Closed:
			return w.drain(events), err
		case <-deadline:
			t.Fatalf("connection still open after %s (received %d events)", timeout, len(events))
			return nil, nil
		}
	}
}
