package relaybench

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

func open(t *testing.T, tr Transport, h http.Handler) streamclient.Stream {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL + "/")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := tr.Open(ctx, (&net.Dialer{Timeout: 5 * time.Second}).DialContext, u, "tok", []string{"templates"}, "")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestSSEAsksForTheTopicWithTheTokenInTheHeaderAndCountsASlowConsumerClose(t *testing.T) {
	st := open(t, SSE{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Query().Get("topic") != "templates" || r.URL.Path != "/events" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("id: 1\nevent: templates\ndata: {\"name\":\"rbseq:7 x\"}\n\n: closed: slow consumer, resume with Last-Event-ID\n\n"))
	}))
	ev, err := st.Next()
	if err != nil || string(ev.ID) != "1" || parseSeq(ev.Data) != 7 {
		t.Fatalf("Next = id %q data %s, %v; want id 1 of template 7", ev.ID, ev.Data, err)
	}
	if _, err := st.Next(); !streamclient.IsSlowConsumer(err) {
		t.Errorf("after the slow-consumer comment Next = %v, want a slow-consumer close", err)
	}
}

func TestWebSocketAsksForTheTopicWithTheTokenInAccessTokenAndCountsASlowConsumerClose(t *testing.T) {
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
		c.Write(r.Context(), websocket.MessageText, []byte(`{"id":"0000000000000001-0000000000000002","topic":"templates","data":{"name":"rbseq:7 x"}}`))
		c.Close(4000, "slow consumer: resume with last_event_id")
	}))
	ev, err := st.Next()
	if err != nil || string(ev.ID) != "0000000000000001-0000000000000002" || parseSeq(ev.Data) != 7 {
		t.Fatalf("Next = id %q data %s, %v; want template 7", ev.ID, ev.Data, err)
	}
	if _, err := st.Next(); !streamclient.IsSlowConsumer(err) {
		t.Errorf("after a slow-consumer close Next = %v, want a slow-consumer close", err)
	}
}

func TestStreamsLeaveFromTheirSourceAddressWithoutReservingAPortForEveryDestination(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	src := SourceAddrs(2)[1]
	conn, err := Dialer(src, 5*time.Second)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	defer conn.Close()
	if got := conn.LocalAddr().(*net.TCPAddr).IP.String(); got != src.String() {
		t.Errorf("connection leaves from %s, want %s", got, src)
	}
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var opt int
	var gerr error
	_ = raw.Control(func(fd uintptr) { opt, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort) })
	if gerr != nil || opt != 1 {
		t.Errorf("IP_BIND_ADDRESS_NO_PORT = %d (%v), want 1", opt, gerr)
	}
}
