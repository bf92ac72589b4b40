package sse_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/sse"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// rawStream is an SSE client on a bare TCP connection: it costs the test no
// goroutine, so the relay's goroutines can be counted.
type rawStream struct {
	conn net.Conn
	r    *bufio.Reader
}

func openRaw(t *testing.T, baseURL, token string) *rawStream {
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
	fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", u.Host, token)
	s := &rawStream{conn: conn, r: bufio.NewReader(conn)}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(s.r, nil)
	if err != nil {
		t.Fatalf("read stream response: %v", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream answered %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The body is read from s.r directly: the stream has no length and
	// ends with the connection.
	return s
}

// waitFor reads lines until one contains want, or fails after timeout.
func (s *rawStream) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if strings.Contains(line, want) {
			return
		}
	}
}

func TestIdleStreamsHoldNoGoroutineAndStillDeliver(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MaxConnectionsPerUser = 0 })
	token := relaytest.Token(t, "zolo-1")

	const streams = 300
	before := runtime.NumGoroutine()
	clients := make([]*rawStream, streams)
	for i := range clients {
		clients[i] = openRaw(t, r.URL, token)
	}
	relaytest.Eventually(t, 10*time.Second, "every stream registered", func() bool {
		return r.Server.Hub().Stats().Subscriptions == streams
	})
	if grown := runtime.NumGoroutine() - before; grown > streams/10 {
		t.Errorf("%d idle streams added %d goroutines; an idle stream should hold none", streams, grown)
	}

	id := relaytest.InsertTemplate(t, db, "for every open stream", "zowi-1", "loc-1")
	for i, c := range clients {
		c.waitFor(t, id, 10*time.Second)
		if t.Failed() {
			t.Fatalf("stream %d did not receive the event", i)
		}
	}
}

func TestAClientThatHangsUpIsForgottenAtOnceAndMayReconnectUnderItsCap(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// Heartbeats are far apart, so only noticing the hang-up itself frees
	// the subscriber's one allowed stream in time.
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.MaxConnectionsPerUser = 1
		c.Heartbeat = 15 * time.Second
	})
	token := relaytest.Token(t, "zolo-1")

	first := openRaw(t, r.URL, token)
	relaytest.Eventually(t, 5*time.Second, "stream registered", func() bool {
		return r.Server.Hub().Stats().Subscriptions == 1
	})
	first.conn.Close()
	relaytest.Eventually(t, 2*time.Second, "closed stream forgotten", func() bool {
		return r.Server.Hub().Stats().Subscriptions == 0
	})

	second := openRaw(t, r.URL, token)
	id := relaytest.InsertTemplate(t, db, "after reconnecting", "zowi-1", "loc-1")
	second.waitFor(t, id, 10*time.Second)
}

func TestHeartbeatsKeepAnIdleStreamAlive(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.Heartbeat = 100 * time.Millisecond })
	s := openRaw(t, r.URL, relaytest.Token(t, "zolo-1"))
	for range 3 {
		s.waitFor(t, ": ping", 2*time.Second)
	}
}

// served is an SSE handler on a hub of its own, so tests can publish events
// straight into it.
type served struct {
	hub *hub.Hub
	url string
	// stop ends Run (with a pump) and returns how long that took.
	stop func() time.Duration
}

// handlerOnHub serves an SSE handler; with pump, the handler's Run serves
// the streams' live part.
func handlerOnHub(t *testing.T, db *pgtest.DB, heartbeat time.Duration, pump bool, writeTimeout ...time.Duration) served {
	t.Helper()
	h := hub.New(16, 0)
	handler := &sse.Handler{
		Gate: &stream.Gate{
			Auth:    auth.NewVerifier([]byte(relaytest.Secret), auth.Options{}),
			Opener:  &stream.Opener{DB: db.Pool, Hub: h, Log: relaytest.Logger(), Heartbeat: heartbeat, CatchupBatch: 100},
			Limiter: limit.New(0, 0),
			Log:     relaytest.Logger(),
		},
		Transport: stream.Transport{Name: "sse"},
		Log:       relaytest.Logger(), WriteTimeout: time.Second, Heartbeat: heartbeat, Retry: 1500 * time.Millisecond,
	}
	if len(writeTimeout) > 0 {
		handler.WriteTimeout = writeTimeout[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	if pump {
		go func() { ran <- handler.Run(ctx) }()
	} else {
		close(ran)
	}
	srv := httptest.NewServer(handler)
	var once sync.Once
	var took time.Duration
	stop := func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			if err := <-ran; err != nil {
				t.Errorf("Run: %v", err)
			}
			took = time.Since(start)
		})
		return took
	}
	t.Cleanup(func() {
		stop()
		srv.Close()
	})
	if pump {
		relaytest.Eventually(t, time.Second, "pump running", handler.Live)
	}
	return served{hub: h, url: srv.URL, stop: stop}
}

func event(seq int64, payload string, actor string, audience ...string) eventlog.Event {
	return eventlog.Event{ID: eventlog.ID{Xid: seq, Seq: seq}, Topic: "templates", Payload: []byte(payload), Audience: audience, Actor: actor}
}

// TestAStreamIsTheSameWithOrWithoutThePump serves one handler on net/http's
// goroutines alone and one with Run: a client cannot tell them apart.
func TestAStreamIsTheSameWithOrWithoutThePump(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	for _, withPump := range []bool{false, true} {
		t.Run(fmt.Sprintf("pump=%v", withPump), func(t *testing.T) {
			srv := handlerOnHub(t, db, time.Minute, withPump)
			h := srv.hub
			s := relaytest.OpenSSE(t, srv.url+"/events", relaytest.BearerHeader(relaytest.Token(t, "zolo-1")))
			if s.Status != http.StatusOK || s.Header.Get("Content-Type") != "text/event-stream" || s.Header.Get("Cache-Control") != "no-cache" {
				t.Fatalf("answered %d %v", s.Status, s.Header)
			}
			relaytest.Eventually(t, 5*time.Second, "subscribed", func() bool { return h.Stats().Subscriptions == 1 })
			events := []eventlog.Event{
				event(1, `{"n":1}`, "zowi-1", "location:loc-1"),
				event(2, `{"n":2}`, "zowi-1", "location:loc-2"),
				event(3, `{"n":3}`, "zolo-1", "location:loc-1"),
				event(4, `{"n":4}`, "", "location:loc-1", "org:org-1"),
			}
			h.Publish(events)
			got := s.Collect(t, 2, 5*time.Second)
			want := []relaytest.Event{
				{ID: events[0].ID.String(), Event: "templates", Data: `{"n":1}`},
				{ID: events[3].ID.String(), Event: "templates", Data: `{"n":4}`},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("received %v, want %v (not another location's, not its own)", got, want)
			}

			h.Shutdown()
			select {
			case <-s.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("stream still open after the hub shut down")
			}
			if c := s.Comments(); !slices.ContainsFunc(c, func(c string) bool { return strings.TrimSpace(c) == "relay shutting down, reconnect" }) {
				t.Errorf("comments %q: want the shutdown notice", c)
			}
		})
	}
}

func TestEveryStreamGetsAHeartbeatEachIntervalEvenWhileEventsFlow(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	const heartbeat = 300 * time.Millisecond
	srv := handlerOnHub(t, db, heartbeat, true)
	s := relaytest.OpenSSE(t, srv.url+"/events", relaytest.BearerHeader(relaytest.Token(t, "zolo-1")))
	relaytest.Eventually(t, 5*time.Second, "subscribed", func() bool { return srv.hub.Stats().Subscriptions == 1 })

	// Events every 50 ms for four intervals: the pings still come.
	const busy = 24
	for i := range busy {
		srv.hub.Publish([]eventlog.Event{event(int64(i+1), `{}`, "zowi-1", "location:loc-1")})
		time.Sleep(50 * time.Millisecond)
	}
	s.Collect(t, busy, 5*time.Second)
	if n := len(s.Comments()); n < 2 {
		t.Errorf("%d pings in %s of events with a %s heartbeat, want one per interval", n, busy*50*time.Millisecond, heartbeat)
	}
}

func TestHeartbeatsAreSpreadOverTheIntervalNotSentAtOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	const heartbeat = 640 * time.Millisecond
	srv := handlerOnHub(t, db, heartbeat, true)
	token := relaytest.Token(t, "zolo-1")

	const streams = 32
	clients := make([]*rawStream, streams)
	for i := range clients {
		clients[i] = openRaw(t, srv.url, token)
	}
	relaytest.Eventually(t, 5*time.Second, "every stream registered", func() bool { return srv.hub.Stats().Subscriptions == streams })
	// Pings sent while the streams were still opening may already wait in
	// the sockets: look at the second interval only, where every stream
	// gets one ping at its own phase.
	start := time.Now()
	var mu sync.Mutex
	var pings []time.Duration
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.conn.SetReadDeadline(start.Add(2*heartbeat + heartbeat/4))
			for {
				line, err := c.r.ReadString('\n')
				if err != nil {
					return
				}
				if d := time.Since(start); strings.HasPrefix(line, ": ping") && d >= heartbeat && d < 2*heartbeat {
					mu.Lock()
					pings = append(pings, d)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	// Streams opened together: were their pings in one burst, or spread
	// over the interval? Count tenths of the interval that saw one.
	if len(pings) < streams/2 {
		t.Fatalf("%d pings in the second interval from %d streams; want about one each", len(pings), streams)
	}
	tenths := map[int64]bool{}
	for _, d := range pings {
		tenths[int64((d-heartbeat)/(heartbeat/10))] = true
	}
	if len(tenths) < 4 {
		t.Errorf("%d pings of %d streams fell in %d tenths of the interval (%v); want them spread", len(pings), streams, len(tenths), pings)
	}
}

func TestShutdownDoesNotWaitForAClientThatStoppedReading(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// A write timeout far longer than the test: shutdown must not wait it out.
	srv := handlerOnHub(t, db, time.Minute, true, time.Minute)
	stalled := openRaw(t, srv.url, relaytest.Token(t, "zolo-1"))
	relaytest.Eventually(t, 5*time.Second, "subscribed", func() bool { return srv.hub.Stats().Subscriptions == 1 })

	// 16 MiB in 8 events, more than loopback socket buffers hold, and
	// fewer events than the queue takes: the pump ends up waiting on the
	// socket, and the subscription stays open.
	payload := `{"fill":"` + strings.Repeat("x", 2<<20) + `"}`
	events := make([]eventlog.Event, 8)
	for i := range events {
		events[i] = event(int64(i+1), payload, "zowi-1", "location:loc-1")
	}
	srv.hub.Publish(events)
	time.Sleep(300 * time.Millisecond)
	if n := srv.hub.Stats().Subscriptions; n != 1 {
		t.Fatalf("%d subscriptions before shutdown, want the stalled one still open", n)
	}
	if took := srv.stop(); took > 5*time.Second {
		t.Errorf("shutdown took %s with a stalled client; it must not wait for the write timeout", took)
	}
	_ = stalled
}

func TestAStalledStreamThatTheHubCutsOffStopsBeingWrittenAtOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// A write timeout far longer than the test: only the hub ending the
	// stream can end the blocked write in time.
	srv := handlerOnHub(t, db, time.Minute, true, time.Minute)
	stalled := openRaw(t, srv.url, relaytest.Token(t, "zolo-1"))
	relaytest.Eventually(t, 5*time.Second, "subscribed", func() bool { return srv.hub.Stats().Subscriptions == 1 })

	// 16 MiB, more than loopback socket buffers hold: the pump takes them
	// from the queue and ends up waiting on the socket.
	const big = 8
	payload := `{"fill":"` + strings.Repeat("x", 2<<20) + `"}`
	events := make([]eventlog.Event, 0, big+20)
	for i := range big {
		events = append(events, event(int64(i+1), payload, "zowi-1", "location:loc-1"))
	}
	srv.hub.Publish(events)
	time.Sleep(300 * time.Millisecond)
	// Then more events than its queue of 16 holds: a slow consumer.
	events = events[:0]
	for i := range 20 {
		events = append(events, event(int64(big+i+1), `{"n":1}`, "zowi-1", "location:loc-1"))
	}
	srv.hub.Publish(events)
	if n := srv.hub.Stats().SlowConsumers; n != 1 {
		t.Fatalf("slow consumers %d, want 1", n)
	}

	// Reading now would let a write that is still going finish all 16 MiB;
	// one that was cut short leaves only what the socket buffers held.
	_ = stalled.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := stalled.r.WriteTo(discard{})
	if err != nil {
		t.Fatalf("read the stalled stream to its end: %v after %d bytes", err, n)
	}
	if n >= big*2<<20 {
		t.Errorf("the client got %d bytes after the hub cut it off: all %d events were still written", n, big)
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
