package ws_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// rawWS is a WebSocket client on a bare TCP connection: it costs the test
// no goroutine, so the relay's goroutines can be counted.
type rawWS struct {
	conn net.Conn
	r    *bufio.Reader
}

func openRawWS(t *testing.T, baseURL, token string) *rawWS {
	t.Helper()
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatalf("dial %s: %v", u.Host, err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", u.Host, token)
	c := &rawWS{conn: conn, r: bufio.NewReader(conn)}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("read handshake response: %v", err)
	}
	// The RFC 6455 §1.3 example key has this answer.
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake answered %d, Sec-WebSocket-Accept %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	return c
}

// waitFor reads frames until a text message contains want.
func (c *rawWS) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, payload); err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if h.OpCode == ws.OpText && bytes.Contains(payload, []byte(want)) {
			return
		}
	}
}

func TestIdleWebSocketStreamsHoldNoGoroutineAndStillDeliver(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MaxConnectionsPerUser = 0 })
	token := relaytest.Token(t, "zolo-1")

	const streams = 300
	before := runtime.NumGoroutine()
	clients := make([]*rawWS, streams)
	for i := range clients {
		clients[i] = openRawWS(t, r.URL, token)
	}
	relaytest.Eventually(t, 10*time.Second, "every stream registered", func() bool {
		return r.Server.Hub().Stats().Subscriptions == streams
	})
	if grown := runtime.NumGoroutine() - before; grown > streams/10 {
		t.Errorf("%d idle WebSocket streams added %d goroutines; an idle stream should hold none", streams, grown)
	}

	id := relaytest.InsertTemplate(t, db, "for every open stream", "zowi-1", "loc-1")
	for i, c := range clients {
		c.waitFor(t, id, wait)
		if t.Failed() {
			t.Fatalf("stream %d did not receive the event", i)
		}
	}
}
