package httpconn_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/httpconn"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConnectionsClosedBeforeTheirRequestAreCountedByCauseAndTimeoutsLogged(t *testing.T) {
	t.Parallel()
	w := &httpconn.Watch{ReadHeaderTimeout: 200 * time.Millisecond}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(rw, "ok") }),
		ReadHeaderTimeout: w.ReadHeaderTimeout,
		ConnState:         w.ConnState,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(ctx, slog.New(slog.NewTextHandler(logs, nil)), 50*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-runDone })

	// Served: counted as neither.
	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// Silent: the server gives up after its read-header timeout and closes
	// without a word, which is all the client sees.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("a connection without a request: read %d bytes, %v; want EOF", n, err)
	}
	eventually(t, "the silent connection counted as timed out", func() bool { return w.TimedOut() == 1 })

	// Gone: the client closes first.
	gone, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	gone.Close()
	eventually(t, "the closed connection counted as abandoned", func() bool { return w.Abandoned() == 1 })
	if w.TimedOut() != 1 {
		t.Errorf("TimedOut = %d after a served request, a silent and an abandoned connection, want 1", w.TimedOut())
	}
	eventually(t, "a warning about the timed-out connection", func() bool {
		return strings.Contains(logs.String(), "read-header timeout") && strings.Contains(logs.String(), "connections=1")
	})
}
