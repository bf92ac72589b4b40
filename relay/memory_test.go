package relay_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"runtime/metrics"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// The relay runs inside the test process, so its memory is read from the Go
// runtime rather than from the process's RSS: the bytes in heap objects,
// live or garbage not yet collected. Everything a relay buffers for its
// clients (queues, frames, replay batches) lives in the heap, and the heap
// is what RSS follows; the rest (stacks, the runtime's own structures, the
// kernel's socket buffers, which are not the process's memory anyway) does
// not grow with the rows. The figure includes the test's own clients and
// inserts, which only makes it stricter.
const heapObjects = "/memory/classes/heap/objects:bytes"

func heapBytes() uint64 {
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// liveHeap is the heap after a full collection: what is still referenced.
// One collection only: what sits in a sync.Pool survives it, as it survives
// in a relay until two collections have passed, which on an idle relay can
// take minutes. A pool that keeps grown buffers is memory kept.
func liveHeap() uint64 {
	runtime.GC()
	return heapBytes()
}

// peakSampler records the largest heap it sees until stopped.
type peakSampler struct {
	stop chan struct{}
	done chan uint64
}

func samplePeak() *peakSampler {
	p := &peakSampler{stop: make(chan struct{}), done: make(chan uint64, 1)}
	go func() {
		peak := heapBytes()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				p.done <- peak
				return
			case <-tick.C:
				peak = max(peak, heapBytes())
			}
		}
	}()
	return p
}

func (p *peakSampler) Stop() uint64 {
	close(p.stop)
	return <-p.done
}

// dialSmall opens a TCP connection to the relay whose receive buffer is as
// small as the kernel allows, so a client that never reads stalls the relay's
// writes after a few kilobytes rather than after megabytes of kernel buffer.
func dialSmall(t *testing.T, baseURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatalf("dial %s: %v", u.Host, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openStalled sends request on a small-buffered connection, checks the
// relay's answer has status want, and from then on never reads.
func openStalled(t *testing.T, baseURL, request string, want int) net.Conn {
	t.Helper()
	conn := dialSmall(t, baseURL)
	if _, err := conn.Write([]byte(request)); err != nil {
		t.Fatalf("send request: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil {
		t.Fatalf("read response header: %v", err)
	}
	if resp.StatusCode != want {
		t.Fatalf("relay answered %s, want %d", resp.Status, want)
	}
	return conn
}

func stalledSSE(t *testing.T, baseURL, token string) net.Conn {
	t.Helper()
	host := strings.TrimPrefix(baseURL, "http://")
	return openStalled(t, baseURL, "GET /events HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+token+
		"\r\nAccept: text/event-stream\r\n\r\n", http.StatusOK)
}

func stalledWS(t *testing.T, baseURL, token string) net.Conn {
	t.Helper()
	host := strings.TrimPrefix(baseURL, "http://")
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	return openStalled(t, baseURL, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+token+
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+
		base64.StdEncoding.EncodeToString(key)+"\r\n\r\n", http.StatusSwitchingProtocols)
}

func TestSlowClientsCannotGrowRelayMemoryBeyondTheByteBounds(t *testing.T) {
	// Not parallel: it measures the memory of the whole process.
	const (
		rows, perTx = 200, 10
		rowBytes    = 500_000
		stalled     = 20 // of each transport
		maxGrowth   = 200 << 20
		maxLeft     = 50 << 20
	)
	started := time.Now()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// Every setting at its default: the bounds under test are the ones a
	// relay runs with.
	r := relaytest.Start(t, db.URL)

	// Templates by zowi-1 shared with loc-1 reach zewi-1 (any location of
	// the org), zowi-2 (its org's ZOWI) and zolo-1 (loc-1).
	slowToken := relaytest.Token(t, "zewi-1")
	var slow []net.Conn
	for range stalled {
		slow = append(slow, stalledSSE(t, r.URL, slowToken), stalledWS(t, r.URL, slowToken))
	}
	fastSSE := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zowi-2")))
	fastWS := fastWebSocket(t, r.URL, relaytest.Token(t, "zolo-1"))
	relaytest.Eventually(t, 10*time.Second, "every stream subscribed", func() bool {
		return r.Server.Hub().Stats().Subscriptions == 2*stalled+2
	})

	before := liveHeap()
	peak := samplePeak()
	// Row i is named "NNN-xxx…", rowBytes long in all.
	prefix := func(i int) string { return fmt.Sprintf("%03d-", i) }
	check := func(who string, got []string, from int) {
		t.Helper()
		for i, data := range got {
			// Reading the name's start and the row's length is enough to
			// tell the rows apart; parsing 500 KB of JSON per event under
			// the race detector is what would make this test slow.
			if !strings.Contains(data, `"`+prefix(from+i)+"xxxx") || len(data) < rowBytes {
				t.Fatalf("%s: event %d is %.60q… of %d bytes, want template %q… of at least %d", who, from+i, data, len(data), prefix(from+i), rowBytes)
			}
		}
	}
	ctx := context.Background()
	for from := 0; from < rows; from += perTx {
		_, err := db.Pool.Exec(ctx, `
INSERT INTO templates (name, share_location_ids, created_by)
SELECT lpad(i::text, 3, '0') || '-' || repeat('x', $3 - 4), '{loc-1}', 'zowi-1'
  FROM generate_series($1::int, $2::int) i ORDER BY i`, from, from+perTx-1, rowBytes)
		if err != nil {
			t.Fatalf("insert rows %d to %d: %v", from, from+perTx-1, err)
		}
		// Clients that keep up: each transaction reaches them before the
		// next begins, and they get every row of it, in order.
		var sse []string
		for _, e := range fastSSE.Collect(t, perTx, 30*time.Second) {
			if e.Event != "templates" {
				t.Fatalf("fast SSE client: event %q %s, want a template", e.Event, e.ID)
			}
			sse = append(sse, e.Data)
		}
		check("fast SSE client", sse, from)
		check("fast WebSocket client", fastWS.collect(t, perTx, 30*time.Second), from)
	}
	grown := int64(peak.Stop()) - int64(before)

	relaytest.Eventually(t, 20*time.Second, "every stalled client cut off", func() bool {
		f := scrape(t, r.URL)
		return r.Server.Hub().Stats().Subscriptions == 2 &&
			sample(f, "pgrelay_connected_subscribers", "transport", "sse") == 1 &&
			sample(f, "pgrelay_connected_subscribers", "transport", "ws") == 1
	})
	if n := r.Server.Hub().Stats().SlowConsumers; n != 2*stalled {
		t.Errorf("slow consumers %d, want the %d stalled clients and neither fast one", n, 2*stalled)
	}
	after := liveHeap()
	for _, c := range slow {
		c.Close()
	}
	t.Logf("%d rows of %d KB to %d stalled and 2 fast clients: heap %d MiB before, peak %+d MiB, %+d MiB after the stalled ones were cut off; %s",
		rows, rowBytes/1000, 2*stalled, before>>20, grown>>20, (int64(after)-int64(before))>>20, time.Since(started).Round(100*time.Millisecond))
	if grown > maxGrowth {
		t.Errorf("heap grew by %d MiB during the inserts, want under %d MiB", grown>>20, maxGrowth>>20)
	}
	if after > before+maxLeft {
		t.Errorf("heap %d MiB after the stalled clients were cut off, want within %d MiB of the %d MiB before", after>>20, maxLeft>>20, before>>20)
	}
}

// wsReader reads WebSocket messages as they come, without decoding them.
type wsReader struct {
	messages chan string
	closed   chan error
}

func fastWebSocket(t *testing.T, baseURL, token string) *wsReader {
	t.Helper()
	conn := relaytest.DialWS(t, baseURL, token, relaytest.SSEOptions{}, nil)
	w := &wsReader{messages: make(chan string, 100), closed: make(chan error, 1)}
	go func() {
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				w.closed <- err
				return
			}
			w.messages <- string(b)
		}
	}()
	return w
}

func (w *wsReader) collect(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	var out []string
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case m := <-w.messages:
			out = append(out, m)
		case err := <-w.closed:
			t.Fatalf("WebSocket closed after %d of %d messages: %v", len(out), n, err)
		case <-deadline:
			t.Fatalf("got %d of %d WebSocket messages within %s", len(out), n, timeout)
		}
	}
	return out
}

func TestConcurrentReplaysOfALargeBacklogReadItInBatchesBoundedInBytes(t *testing.T) {
	// Not parallel: it measures the memory of the whole process.
	const (
		rows, rowBytes = 100, 500_000
		replays        = 3
		maxGrowth      = 150 << 20
	)
	started := time.Now()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by)
	            SELECT lpad(i::text, 3, '0') || '-' || repeat('x', $1 - 4), '{loc-1}', 'zowi-1'
	              FROM generate_series(0, $2 - 1) i ORDER BY i`, rowBytes, rows)
	relaytest.Eventually(t, 10*time.Second, "the backlog in the log", func() bool {
		return r.Server.Hub().Stats().Published >= rows
	})

	before := liveHeap()
	peak := samplePeak()
	// Resuming from the very first position replays the whole backlog.
	from := strings.Repeat("0", 16) + "-" + strings.Repeat("0", 16)
	errs := make(chan error, replays)
	for i := range replays {
		go func() {
			errs <- replayAll(r.URL, relaytest.Token(t, []string{"zowi-2", "zewi-1", "zolo-1"}[i]), from, rows)
		}()
	}
	for range replays {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	grown := int64(peak.Stop()) - int64(before)
	t.Logf("%d concurrent replays of %d rows of %d KB: heap %d MiB before, peak %+d MiB; %s",
		replays, rows, rowBytes/1000, before>>20, grown>>20, time.Since(started).Round(100*time.Millisecond))
	if grown > maxGrowth {
		t.Errorf("heap grew by %d MiB during the replays, want under %d MiB", grown>>20, maxGrowth>>20)
	}
}

// replayAll opens a stream resuming after id from and reads it, without
// keeping what it reads, until want events arrived in increasing id order.
func replayAll(baseURL, token, from string, want int) error {
	req, err := http.NewRequest(http.MethodGet, baseURL+"/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Last-Event-ID", from)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("open replay: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("open replay: %s", resp.Status)
	}
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	last, n := from, 0
	for n < want {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // the long data line, read in pieces
		}
		if err != nil {
			return fmt.Errorf("replay after %d of %d events: %w", n, want, err)
		}
		if id, ok := strings.CutPrefix(string(line), "id: "); ok {
			id = strings.TrimSpace(id)
			if id <= last {
				return fmt.Errorf("replay: event %s after %s", id, last)
			}
			last, n = id, n+1
		}
	}
	return nil
}
