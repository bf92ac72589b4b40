package listen_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/listen"
)

// recorder is a Handler that keeps what it was told.
type recorder struct {
	mu        sync.Mutex
	announced []announcement
	changes   []filter.Change
	connected []bool
}

type announcement struct {
	payload string
	from    uint32
}

func (r *recorder) Announced(payload string, from uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.announced = append(r.announced, announcement{payload, from})
}

func (r *recorder) FiltersChanged(c filter.Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) Connected(up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.connected = append(r.connected, up)
}

// snapshot returns copies of what was recorded.
func (r *recorder) snapshot() ([]announcement, []filter.Change, []bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]announcement(nil), r.announced...), append([]filter.Change(nil), r.changes...), append([]bool(nil), r.connected...)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const appName = "pgrelay-listener-test"

// start runs a listener on db until the test ends.
func start(t *testing.T, db *pgtest.DB) (*recorder, *listen.Listener) {
	t.Helper()
	rec := &recorder{}
	connect := func(ctx context.Context) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(db.URL)
		if err != nil {
			return nil, err
		}
		cfg.RuntimeParams["application_name"] = appName
		return pgx.ConnectConfig(ctx, cfg)
	}
	l := listen.New(connect, rec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v after cancel, want context.Canceled", err)
		}
	})
	return rec, l
}

// caughtUp reports whether the listener reports itself connected and asked
// for a catch-up on both channels at least times times.
func caughtUp(rec *recorder, times int) func() bool {
	return func() bool {
		ann, changes, conn := rec.snapshot()
		backlogs, all := 0, 0
		for _, a := range ann {
			if a.from == 0 && a.payload == "" {
				backlogs++
			}
		}
		for _, c := range changes {
			if c.All {
				all++
			}
		}
		return len(conn) > 0 && conn[len(conn)-1] && backlogs >= times && all >= times
	}
}

func TestTheListenerHandsOnBothChannelsWithTheSendersProcessID(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	rec, _ := start(t, db)
	eventually(t, "connected and caught up", caughtUp(rec, 1))

	var pid uint32
	if err := db.Pool.QueryRow(context.Background(), `
SELECT pg_backend_pid()::int8, pg_notify($1, 'sealed payload'), pg_notify($2, '{"subscribers":["u1","u2"]}')`,
		eventlog.AnnounceChannel, filter.ChangeChannel).Scan(&pid, new(any), new(any)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the announcement and the filter change", func() bool {
		ann, changes, _ := rec.snapshot()
		return len(ann) == 2 && len(changes) == 2
	})
	ann, changes, _ := rec.snapshot()
	if got := ann[1]; got.payload != "sealed payload" || got.from != pid {
		t.Errorf("announcement %+v, want the payload from session %d", got, pid)
	}
	if got := changes[1]; got.All || len(got.Subscribers) != 2 || got.Subscribers[0] != "u1" {
		t.Errorf("filter change %+v, want subscribers u1 and u2", got)
	}
}

func TestAListenerWhoseBackendIsKilledReconnectsAndAsksForACatchUp(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	rec, l := start(t, db)
	eventually(t, "connected and caught up", caughtUp(rec, 1))

	for round := 2; round <= 4; round++ {
		db.Exec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()", appName)
		eventually(t, "disconnected", func() bool {
			_, _, conn := rec.snapshot()
			for _, up := range conn[1:] {
				if !up {
					return true
				}
			}
			return false
		})
		eventually(t, "reconnected and caught up again", caughtUp(rec, round))
	}
	if n := l.Reconnects(); n < 3 {
		t.Errorf("Reconnects = %d, want at least 3", n)
	}
	// Back for good: notifications flow again.
	db.Exec(t, "SELECT pg_notify($1, 'after')", eventlog.AnnounceChannel)
	eventually(t, "a notification after the reconnects", func() bool {
		ann, _, _ := rec.snapshot()
		return ann[len(ann)-1].payload == "after"
	})
}
