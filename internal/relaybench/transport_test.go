package relaybench

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func dialer() DialFunc { return (&net.Dialer{Timeout: 5 * time.Second}).DialContext }

func open(t *testing.T, tr Transport, h http.Handler) Stream {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := tr.Open(ctx, dialer(), u, "tok", []string{"templates"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestSSEParsesEventsCommentsLongAndMultiLineData(t *testing.T) {
	long := strings.Repeat("x", 3*sseBuffer)
	st := open(t, SSE{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Query().Get("topic") != "templates" || r.URL.Path != "/events" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("retry: 2000\n\n: ping\n\nid: 1\nevent: templates\ndata: {\"a\":1}\n\n"))
		w.(http.Flusher).Flush()
		w.Write([]byte("id: 2\r\nevent: templates\r\ndata: " + long + "\r\ndata: second\r\n\r\n"))
		w.Write([]byte(": closed: slow consumer, resume with Last-Event-ID\n\n"))
	}))
	want := []Event{{ID: []byte("1"), Type: []byte("templates"), Data: []byte(`{"a":1}`)},
		{ID: []byte("2"), Type: []byte("templates"), Data: []byte(long + "\nsecond")}}
	for i, w := range want {
		got, err := st.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if string(got.ID) != string(w.ID) || string(got.Type) != string(w.Type) || string(got.Data) != string(w.Data) {
			t.Errorf("event %d = id %q type %q data %d bytes; want id %q type %q data %d bytes",
				i, got.ID, got.Type, len(got.Data), w.ID, w.Type, len(w.Data))
		}
	}
	if _, err := st.Next(); !errors.Is(err, ErrSlowConsumer) {
		t.Errorf("after the slow-consumer comment Next = %v, want ErrSlowConsumer", err)
	}
}

func TestSSEReportsTheRelaysRefusal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"invalid token"}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	_, err := SSE{}.Open(context.Background(), dialer(), u, "tok", nil)
	var rej *RejectedError
	if !errors.As(err, &rej) || rej.Status != http.StatusUnauthorized || !strings.Contains(rej.Body, "invalid token") {
		t.Errorf("Open = %v, want a RejectedError with 401 and the body", err)
	}
}

func TestWebSocketReadsTheDocumentedMessageFormat(t *testing.T) {
	st := open(t, WebSocket{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" || r.URL.Query().Get("access_token") != "tok" || r.URL.Query().Get("topic") != "templates" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		c.Write(ctx, websocket.MessageText, []byte(`{"id":"0000000000000001-0000000000000002","topic":"templates","data":{"name":"rbseq:7 x"}}`))
		c.Close(websocket.StatusPolicyViolation, "slow consumer: resume with last_event_id")
	}))
	ev, err := st.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if string(ev.ID) != "0000000000000001-0000000000000002" || string(ev.Type) != "templates" || parseSeq(ev.Data) != 7 {
		t.Errorf("event = id %q topic %q data %s", ev.ID, ev.Type, ev.Data)
	}
	if _, err := st.Next(); !errors.Is(err, ErrSlowConsumer) {
		t.Errorf("after a slow-consumer close Next = %v, want ErrSlowConsumer", err)
	}
}
