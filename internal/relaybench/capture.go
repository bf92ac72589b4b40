package relaybench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
)

// captureWait bounds the wait for a requested capture mode: a switch to wal
// is completed by the relays' sequencer (it creates the replication slot),
// which can take a few seconds on a busy server.
const captureWait = 60 * time.Second

// SetCapture asks for capture mode (relay.set_capture) and waits until it
// is in force, so that a run measures the mode it names from its first
// insert.
func SetCapture(ctx context.Context, pool *pgxpool.Pool, mode string, logf func(string, ...any)) error {
	var answer string
	if err := pool.QueryRow(ctx, "SELECT relay.set_capture($1)::text", mode).Scan(&answer); err != nil {
		return fmt.Errorf("--capture %s: relay.set_capture: %w", mode, err)
	}
	deadline := time.Now().Add(captureWait)
	for {
		var inForce string
		if err := pool.QueryRow(ctx, "SELECT mode FROM relay.capture").Scan(&inForce); err != nil {
			return fmt.Errorf("--capture %s: read relay.capture: %w", mode, err)
		}
		if inForce == mode {
			logf("capture mode %s in force", mode)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("--capture %s: requested %s ago and %s is still in force (is a relay's sequencer running, with REPLICATION for wal?)", mode, captureWait, inForce)
		}
		if err := ctxtime.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
