package relay_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

func TestAnIdleKeepAliveConnectionIsClosedByTheRelayAfterTheIdleTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	const idle = 300 * time.Millisecond
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.IdleTimeout = idle })

	conn, err := net.Dial("tcp", strings.TrimPrefix(r.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("first request: %d, close %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
	}
	answered := time.Now()

	// The client now says nothing: the relay must hang up by itself.
	_ = conn.SetReadDeadline(time.Now().Add(idle + 5*time.Second))
	_, err = br.ReadByte()
	waited := time.Since(answered)
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		t.Fatalf("idle connection still open after %s with an idle timeout of %s", waited.Round(time.Millisecond), idle)
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("reading the idle connection: %v, want EOF", err)
	}
	if waited < idle-50*time.Millisecond {
		t.Errorf("closed after %s, before the idle timeout of %s", waited, idle)
	}
}

func TestStreamsAreNotIdleConnections(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	const idle = 200 * time.Millisecond
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.IdleTimeout = idle })
	sse := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{})
	wsc := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{})
	// Silent for several idle timeouts, as a stream between events is.
	sse.Quiet(t, 5*idle)
	relaytest.InsertTemplate(t, db, "after a quiet spell", "zolo-1", "loc-1")
	if got := names(t, sse.Collect(t, 1, settle)); got[0] != "after a quiet spell" {
		t.Errorf("SSE: got %q", got)
	}
	if got := names(t, wsc.Collect(t, 1, settle)); got[0] != "after a quiet spell" {
		t.Errorf("WebSocket: got %q", got)
	}
}

func TestMetricsAddrServesMetricsOnItsOwnListenerAndNotOnThePublicPort(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MetricsAddr = addr })

	var body string
	relaytest.Eventually(t, 5*time.Second, "metrics on "+addr, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK
	})
	if !strings.Contains(body, "pgrelay_ready 1") {
		t.Errorf("the metrics listener does not serve the relay's metrics: %.300s", body)
	}
	resp, err := http.Get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || strings.Contains(string(b), "pgrelay_") {
		t.Errorf("the public address still serves /metrics: %d %.200s", resp.StatusCode, b)
	}
}

func TestWithoutMetricsAddrMetricsAreOnThePublicPort(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := relaytest.Start(t, db.URL)
	resp, err := http.Get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "pgrelay_ready") {
		t.Errorf("GET /metrics: %d %.200s", resp.StatusCode, b)
	}
}
