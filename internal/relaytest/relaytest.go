// Package relaytest starts real relays against a test database and connects
// real clients to them, for end-to-end tests.
package relaytest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/examples/templates"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
)

// Secret signs the tokens of test relays.
const Secret = "pgrelay-test-secret-0123456789"

// Relay is a relay running in the test process.
type Relay struct {
	URL    string
	Server *relay.Server
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// Config returns the configuration test relays use: fast polls so tests are
// quick, small pools so many relays fit in one server's connection limit.
func Config(dbURL string) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.DatabaseURL = dbURL
	cfg.Addr = "127.0.0.1:0"
	cfg.JWTSecret = Secret
	cfg.PoolSize = 4
	cfg.SafetyPoll = 500 * time.Millisecond
	cfg.ShutdownWait = 5 * time.Second
	return cfg
}

// Logger returns a logger for test relays: quiet unless PGRELAY_TEST_LOG is
// set.
func Logger() *slog.Logger {
	if os.Getenv("PGRELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start runs a relay on the database at dbURL until the test ends (or Stop).
// It waits until the relay is ready. mutate adjusts the configuration. The
// relay's log is kept and printed if the test fails (or written to stderr
// as it happens with PGRELAY_TEST_LOG set).
func Start(t testing.TB, dbURL string, mutate ...func(*relay.Config)) *Relay {
	t.Helper()
	return StartOn(t, dbURL, nil, mutate...)
}

// StartOn is Start serving on ln (nil: a new listener on a free loopback
// port), for tests that shape the relay's connections (see
// SmallSendBuffers).
func StartOn(t testing.TB, dbURL string, ln net.Listener, mutate ...func(*relay.Config)) *Relay {
	t.Helper()
	if os.Getenv("PGRELAY_TEST_LOG") != "" {
		return start(t, dbURL, ln, Logger(), mutate)
	}
	logs := &Buffer{}
	// Registered before the relay's own cleanup, so it runs after the relay
	// has stopped and logged why.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the relay started at %s:\n%s", dbURL, logs.String())
		}
	})
	return start(t, dbURL, ln, slog.New(slog.NewTextHandler(logs, nil)), mutate)
}

// StartLogging is Start with the relay logging to log.
func StartLogging(t testing.TB, dbURL string, log *slog.Logger, mutate ...func(*relay.Config)) *Relay {
	t.Helper()
	return start(t, dbURL, nil, log, mutate)
}

func start(t testing.TB, dbURL string, ln net.Listener, log *slog.Logger, mutate []func(*relay.Config)) *Relay {
	t.Helper()
	cfg := Config(dbURL)
	for _, m := range mutate {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := relay.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start relay: %v", err)
	}
	if ln == nil {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			cancel()
			t.Fatalf("listen: %v", err)
		}
	}
	r := &Relay{URL: "http://" + ln.Addr().String(), Server: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() { r.Stop(t) })
	Eventually(t, 10*time.Second, "relay ready", srv.Ready)
	return r
}

// Stop shuts the relay down and waits for it.
func (r *Relay) Stop(t testing.TB) {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("relay stopped with error: %v", err)
			}
		case <-time.After(15 * time.Second):
			// What is stuck is the whole story: keep it with the failure.
			var stacks bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Errorf("relay did not stop within 15s; goroutines:\n%s", stacks.String())
		}
	})
}

// Token returns a valid token for subscriber sub.
func Token(t testing.TB, sub string) string {
	t.Helper()
	tok, err := auth.Issue([]byte(Secret), sub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Eventually polls cond every 10 ms until it holds, failing the test after
// timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Seed inserts the example's seed story (templates.Seed): org-1 with
// locations loc-1, loc-2, loc-3 and users zowi-1, zowi-2 (ZOWI), zolo-1
// (ZOLO at loc-1), zewi-1 (ZEWI), zelo-1 (ZELO at loc-2); org-2 with loc-9
// and users zowi-9 (ZOWI), zolo-9 (ZOLO at loc-9).
func Seed(t testing.TB, db *pgtest.DB) {
	t.Helper()
	db.Exec(t, templates.Seed())
}

// InsertTemplate inserts a template with plain SQL and returns its id.
func InsertTemplate(t testing.TB, db *pgtest.DB, name, createdBy string, shareWith ...string) string {
	t.Helper()
	if shareWith == nil {
		shareWith = []string{}
	}
	var id string
	err := db.Pool.QueryRow(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, $2, $3) RETURNING id`,
		name, shareWith, createdBy).Scan(&id)
	if err != nil {
		t.Fatalf("insert template %q: %v", name, err)
	}
	return id
}
