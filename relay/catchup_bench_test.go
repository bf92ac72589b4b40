package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/cputime"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// catchUpBacklog is how many events a reconnecting client has missed.
const catchUpBacklog = 20_000

// BenchmarkCatchUp measures replay from the log against real PostgreSQL:
// one client reconnects with a Last-Event-ID before a backlog of
// catchUpBacklog events addressed to it and reads the SSE stream until it
// has all of them. events/s is the figure to compare with the target
// (≥ 50,000/s); it includes the database reads, matching, encoding, HTTP
// and the client's parsing, on one machine.
func BenchmarkCatchUp(b *testing.B) {
	db := pgtest.New(b)
	relaytest.Seed(b, db)
	// One statement: every row is a separate event, all for zewi-1 (ZEWI of
	// org-1 listens to loc-1), interleaved with as many it must not get.
	db.Exec(b, `
INSERT INTO templates (name, share_location_ids, created_by)
SELECT 'backlog ' || g, CASE WHEN g % 2 = 0 THEN '{loc-1}'::text[] ELSE '{loc-9}'::text[] END,
       CASE WHEN g % 2 = 0 THEN 'zolo-1' ELSE 'zolo-9' END
  FROM generate_series(1, $1) AS g`, 2*catchUpBacklog)
	// Started after the backlog committed, the relay's live position is past
	// it: all of it comes from the log.
	r := relaytest.Start(b, db.URL)
	token := relaytest.Token(b, "zewi-1")
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Start()
	for b.Loop() {
		if n := readReplay(b, r.URL, token, catchUpBacklog); n != catchUpBacklog {
			b.Fatalf("replayed %d events, want %d", n, catchUpBacklog)
		}
	}
	b.StopTimer()
	events := float64(b.N * catchUpBacklog)
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(cpu.Per(b.N*catchUpBacklog), "cpu-ns/event")
}

// readReplay connects with a resume id before every event and counts the
// events received until want have arrived.
func readReplay(b *testing.B, base, token string, want int) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Last-Event-ID", "0000000000000000-0000000000000000")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for n < want && sc.Scan() {
		if bytes.HasPrefix(sc.Bytes(), []byte("id: ")) {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(fmt.Errorf("read replay: %w", err))
	}
	return n
}
