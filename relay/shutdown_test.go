package relay_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// producer inserts templates by zowi-2 shared with loc-1 and loc-2 (every
// client of the test receives them) until stopped.
type producer struct {
	mu    sync.Mutex
	names []string
	err   error
	stop  context.CancelFunc
	done  chan struct{}
}

func startProducer(t *testing.T, db *pgtest.DB, every time.Duration) *producer {
	ctx, cancel := context.WithCancel(context.Background())
	p := &producer{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			name := fmt.Sprintf("p-%05d", i)
			// Not cancelled by stop: an insert cut off mid-commit may or may
			// not have committed, and the test must know which.
			_, err := db.Pool.Exec(context.Background(), `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1,loc-2}', 'zowi-2')`, name)
			p.mu.Lock()
			if err != nil {
				p.err = err
				p.mu.Unlock()
				return
			}
			p.names = append(p.names, name)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { p.stop(); <-p.done })
	return p
}

func (p *producer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.names)
}

// finish stops the producer and returns what it committed, in order.
func (p *producer) finish(t *testing.T) []string {
	t.Helper()
	p.stop()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		t.Fatalf("producer failed: %v", p.err)
	}
	return p.names
}

func TestShutdownEndsEveryStreamInTimeAndClientsResumeElsewhereWithNothingLostOrRepeated(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		const wait = 5 * time.Second
		a := relaytest.Start(t, db.URL, func(c *relay.Config) { c.Name = "relay-a"; c.ShutdownWait = wait })
		b := relaytest.Start(t, db.URL, func(c *relay.Config) { c.Name = "relay-b" })

		users := []string{"zowi-1", "zewi-1", "zolo-1", "zelo-1"}
		onA := make([]relaytest.Stream, len(users))
		got := make([][]relaytest.Event, len(users))
		for i, u := range users {
			onA[i] = tr.Subscribe(t, a.URL, relaytest.Token(t, u), relaytest.SSEOptions{})
		}
		prod := startProducer(t, db, 3*time.Millisecond)
		for i := range users {
			got[i] = onA[i].Collect(t, 5, settle)
		}

		start := time.Now()
		a.Stop(t)
		if d := time.Since(start); d >= wait {
			t.Errorf("relay A took %s to stop: streams were not ended before the %s deadline", d, wait)
		}
		for i, u := range users {
			rest, end := onA[i].WaitEnd(t, time.Second)
			if want := tell(t, tr.Name).shutdown; end != want {
				t.Errorf("%s's stream ended with %+v, want %+v: told to reconnect", u, end, want)
			}
			got[i] = append(got[i], rest...)
		}

		onB := make([]relaytest.Stream, len(users))
		for i, u := range users {
			onB[i] = tr.Subscribe(t, b.URL, relaytest.Token(t, u), relaytest.SSEOptions{LastEventID: got[i][len(got[i])-1].ID})
		}
		// Keep producing after the move, then settle.
		atMove := prod.count()
		relaytest.Eventually(t, settle, "producer going on after the move", func() bool { return prod.count() >= atMove+30 })
		want := prod.finish(t)

		for i, u := range users {
			if missing := len(want) - len(got[i]); missing > 0 {
				got[i] = append(got[i], onB[i].Collect(t, missing, settle)...)
			}
			names := names(t, got[i])
			if !slices.Equal(names, want) {
				t.Errorf("%s received %d events, want the %d inserted, exactly once and in order:\ngot  %q\nwant %q", u, len(names), len(want), names, want)
			}
			for j := 1; j < len(got[i]); j++ {
				if got[i][j].ID <= got[i][j-1].ID {
					t.Errorf("%s: event id %s after %s: ids must increase", u, got[i][j].ID, got[i][j-1].ID)
					break
				}
			}
		}
		for i := range users {
			onB[i].Quiet(t, 200*time.Millisecond)
		}
	})
}
