package streamclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
)

func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func openSSE(t *testing.T, url string, opts Options) *SSE {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := OpenSSE(ctx, nil, url, opts)
	if err != nil {
		t.Fatalf("OpenSSE: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openWS(t *testing.T, url string, opts Options) *WS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := OpenWS(ctx, nil, url, opts)
	if err != nil {
		t.Fatalf("OpenWS: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSSESendsTheStreamParametersAsABrowserDoes(t *testing.T) {
	got := make(chan *http.Request, 1)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r
		w.Header().Set("Content-Type", "text/event-stream")
	})
	openSSE(t, base+"/events?x=1", Options{Topics: []string{"a", "b"}, LastEventID: "42", Token: "tok", Header: http.Header{"Origin": {"https://app.example"}}})
	r := <-got
	q := r.URL.Query()
	if r.URL.Path != "/events" || q.Get("x") != "1" || strings.Join(q["topic"], ",") != "a,b" || q.Has("last_event_id") || q.Has("access_token") {
		t.Errorf("request %s, want /events?x=1 with topics a and b and nothing else", r.URL)
	}
	if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Last-Event-ID") != "42" || r.Header.Get("Accept") != "text/event-stream" || r.Header.Get("Origin") != "https://app.example" {
		t.Errorf("headers %v, want the bearer token, Last-Event-ID, Accept and the extra Origin", r.Header)
	}
}

func TestSSEReadsEventsCommentsLongAndMultiLineDataAndTheReasonTheStreamEnded(t *testing.T) {
	long := strings.Repeat("x", 3*DefaultBufferSize)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("retry: 2000\n\n: ping\n\nid: 1\nevent: templates\ndata: {\"a\":1}\n\n"))
		w.(http.Flusher).Flush()
		w.Write([]byte("id: 2\r\nevent: templates\r\ndata: " + long + "\r\ndata: second\r\n\r\n"))
		w.Write([]byte("id: 3\nevent: reset\ndata: {}\n\n: closed: slow consumer, resume with Last-Event-ID\n\n: ping\n\n"))
	})
	s := openSSE(t, base+"/events", Options{})
	var comments []string
	s.OnComment = func(c []byte) { comments = append(comments, string(c)) }
	if s.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("Header %v, want the answer's", s.Header)
	}
	want := []struct{ id, typ, data string }{{"1", "templates", `{"a":1}`}, {"2", "templates", long + "\nsecond"}, {"3", "reset", "{}"}}
	for i, w := range want {
		got, err := s.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if string(got.ID) != w.id || string(got.Type) != w.typ || string(got.Data) != w.data {
			t.Errorf("event %d = id %q type %q data of %d bytes; want id %q type %q data of %d bytes", i, got.ID, got.Type, len(got.Data), w.id, w.typ, len(w.data))
		}
	}
	_, err := s.Next()
	var ce *ClosedError
	if !errors.As(err, &ce) || ce.Reason != "closed: slow consumer, resume with Last-Event-ID" || !IsSlowConsumer(err) {
		t.Errorf("at the end Next = %v, want the closing comment as the reason (not the heartbeat after it)", err)
	}
	if strings.Join(comments, "|") != "ping|closed: slow consumer, resume with Last-Event-ID|ping" {
		t.Errorf("comments %q, want every comment line in order", comments)
	}
}

func TestSSEThatEndsWithoutAReasonIsAnUnexpectedEOF(t *testing.T) {
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("id: 1\ndata: x\n\n: ping\n\n"))
	})
	s := openSSE(t, base, Options{})
	if _, err := s.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Next = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestARefusalCarriesTheStatusHeaderAndBodyOnEveryTransport(t *testing.T) {
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"too many streams"}` + "\n"))
	})
	open := map[string]func() error{
		"sse": func() error { _, err := OpenSSE(context.Background(), nil, base+"/events", Options{}); return err },
		"ws":  func() error { _, err := OpenWS(context.Background(), nil, base+"/ws", Options{}); return err },
	}
	for name, open := range open {
		var rej *RejectedError
		if err := open(); !errors.As(err, &rej) || rej.Status != 503 || rej.Header.Get("Retry-After") != "1" || rej.Body != `{"error":"too many streams"}` {
			t.Errorf("%s: Open = %v, want a RejectedError with 503, Retry-After and the trimmed body", name, err)
		}
	}
}

func TestAStreamThatDoesNotAnswerIsBoundedByTheContext(t *testing.T) {
	base := serve(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	for name, open := range map[string]func(context.Context) error{
		"sse": func(ctx context.Context) error { _, err := OpenSSE(ctx, nil, base, Options{}); return err },
		"ws":  func(ctx context.Context) error { _, err := OpenWS(ctx, nil, base, Options{}); return err },
	} {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		if err := open(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Open after cancelling = %v, want context.Canceled", name, err)
		}
	}
}

func TestWSSendsTheStreamParametersInTheQuery(t *testing.T) {
	got := make(chan *http.Request, 1)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			c.CloseNow()
		}
	})
	openWS(t, "ws"+strings.TrimPrefix(base, "http")+"/ws", Options{Topics: []string{"templates"}, LastEventID: "42", Token: "tok", TokenInQuery: true})
	r := <-got
	q := r.URL.Query()
	if r.URL.Path != "/ws" || q.Get("topic") != "templates" || q.Get("last_event_id") != "42" || q.Get("access_token") != "tok" || r.Header.Get("Authorization") != "" {
		t.Errorf("request %s (Authorization %q), want topic, last_event_id and access_token in the query only", r.URL, r.Header.Get("Authorization"))
	}
}

func TestWSReadsEventsAndResetsAnswersPingsAndReturnsTheCloseCodeAndReason(t *testing.T) {
	pong := make(chan string, 1)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		frames := []ws.Frame{
			ws.NewTextFrame([]byte(`{"id":"1","topic":"templates","data":{"a":"}"}}`)),
			ws.NewPingFrame([]byte("are you there")),
			// A message in two frames.
			ws.NewFrame(ws.OpText, false, []byte(`{"type":"reset",`)),
			ws.NewFrame(ws.OpContinuation, true, []byte(`"id":"2","data":{"reason":"reload"}}`)),
			ws.NewCloseFrame(ws.NewCloseFrameBody(4403, "subscriber no longer exists")),
		}
		for _, f := range frames {
			if err := ws.WriteFrame(conn, f); err != nil {
				return
			}
		}
		f, err := ws.ReadFrame(conn)
		if err == nil && f.Header.Masked {
			ws.Cipher(f.Payload, f.Header.Mask, 0)
		}
		pong <- fmt.Sprintf("%v %s", f.Header.OpCode, f.Payload)
		_, _ = ws.ReadFrame(conn) // the close answer
	})
	s := openWS(t, base+"/ws", Options{})
	for i, want := range []struct{ id, typ, data string }{{"1", "templates", `{"a":"}"}`}, {"2", "reset", `{"reason":"reload"}`}} {
		got, err := s.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(got.ID) != want.id || string(got.Type) != want.typ || string(got.Data) != want.data {
			t.Errorf("message %d = %q %q %s, want %q %q %s", i, got.ID, got.Type, got.Data, want.id, want.typ, want.data)
		}
	}
	_, err := s.Next()
	var ce *ClosedError
	if !errors.As(err, &ce) || ce.Code != 4403 || ce.Reason != "subscriber no longer exists" || IsSlowConsumer(err) {
		t.Errorf("Next = %v, want the close code 4403 and its reason", err)
	}
	if got, want := <-pong, fmt.Sprintf("%v are you there", ws.OpPong); got != want {
		t.Errorf("answer to the ping %q, want %q", got, want)
	}
}

func TestWSRefusesAMessageLongerThanItsBound(t *testing.T) {
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.Write(r.Context(), websocket.MessageText, make([]byte, 2000))
	})
	s := openWS(t, base, Options{MaxMessage: 1000})
	if _, err := s.ReadMessage(); err == nil || !strings.Contains(err.Error(), "more than 1000 bytes") {
		t.Errorf("ReadMessage = %v, want the message refused for its length", err)
	}
}

func TestWSRefusesAnUpgradeWithoutTheRightAcceptKey(t *testing.T) {
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90LXRoZS1rZXk=\r\n\r\n")
		brw.Flush()
		bufio.NewReader(conn).ReadByte()
	})
	if _, err := OpenWS(context.Background(), nil, base, Options{}); err == nil || !strings.Contains(err.Error(), "Sec-WebSocket-Accept") {
		t.Errorf("OpenWS = %v, want the handshake refused for its accept key", err)
	}
}

func TestWSSendsTextAndCloseFramesMasked(t *testing.T) {
	got := make(chan string, 2)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, b, err := c.Read(r.Context())
		got <- string(b)
		_, _, err = c.Read(r.Context())
		got <- websocket.CloseStatus(err).String()
	})
	s := openWS(t, base, Options{})
	if err := s.WriteText([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWith(1000, "bye"); err != nil {
		t.Fatal(err)
	}
	if m, code := <-got, <-got; m != "hello" || code != websocket.StatusNormalClosure.String() {
		t.Errorf("relay read %q then %s, want hello then a normal closure", m, code)
	}
}

func TestAQueryIsSentAsWrittenWithTheStreamParametersAfterIt(t *testing.T) {
	got := make(chan string, 1)
	base := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.RawQuery
		w.WriteHeader(http.StatusBadRequest)
	})
	_, _ = OpenSSE(context.Background(), nil, base+"/events?topic=%zz;drop", Options{Topics: []string{"templates"}})
	if q := <-got; q != "topic=%zz;drop&topic=templates" {
		t.Errorf("query %q, want the written one, then the options'", q)
	}
}

func TestRetryAfterReadsSecondsOrADateOfA503Or429Only(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	refused := func(status int, retryAfter string) error {
		h := http.Header{}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		return fmt.Errorf("open: %w", &RejectedError{Status: status, Header: h})
	}
	cases := []struct {
		name   string
		err    error
		want   time.Duration
		wantOK bool
	}{
		{"503 with seconds", refused(503, "3"), 3 * time.Second, true},
		{"429 with seconds", refused(429, " 1 "), time.Second, true},
		{"503 with a date", refused(503, now.Add(90*time.Second).Format(http.TimeFormat)), 90 * time.Second, true},
		{"503 with a date past", refused(503, now.Add(-time.Minute).Format(http.TimeFormat)), 0, true},
		{"503 without the header", refused(503, ""), 0, false},
		{"503 with nonsense", refused(503, "soon"), 0, false},
		{"400 with the header", refused(400, "3"), 0, false},
		{"not a refusal", errors.New("connection refused"), 0, false},
	}
	for _, c := range cases {
		got, ok := RetryAfter(c.err, now)
		if got != c.want || ok != c.wantOK {
			t.Errorf("%s: got %s %v, want %s %v", c.name, got, ok, c.want, c.wantOK)
		}
	}
}
