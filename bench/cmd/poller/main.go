// Command poller reads relay.events the way a busy sequencer would: every
// interval it asks for the events after the last one it saw, as a relay's
// reader does (eventlog.Reader, with its cached list of other databases'
// transactions). bench/producer-cost.sh runs it
// beside pgbench so the producers pay for a live reader (its snapshot, its
// index scans, its payload reads) and not only for their own writes.
//
//	poller [--database-url URL] [--interval 2ms] [--batch 1000]
//
// It runs until interrupted, then prints one line: polls, events read, and
// the last position.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "poller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("poller", flag.ContinueOnError)
	dbURL := fs.String("database-url", getenv("DATABASE_URL"), "PostgreSQL connection URL")
	interval := fs.Duration("interval", 2*time.Millisecond, "time between polls")
	batch := fs.Int("batch", 1000, "most events read per poll")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(*dbURL)
	if err != nil {
		return fmt.Errorf("bad database URL: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "pgrelay-bench-poller"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// Start at the current tail: the benchmark measures the cost of keeping
	// up with new events, not of reading history.
	last, err := eventlog.Tail(ctx, conn)
	if err != nil {
		return err
	}
	reader := eventlog.NewReader(250 * time.Millisecond)
	var polls, events int
	ticker := time.NewTicker(*interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(stdout, "poller: %d polls, %d events, last %s\n", polls, events, last)
			return nil
		case <-ticker.C:
		}
		batchEvents, err := reader.ReadAfter(ctx, conn, last, *batch)
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			continue // reported by the select above
		}
		if err != nil {
			return err
		}
		polls++
		events += len(batchEvents)
		if n := len(batchEvents); n > 0 {
			last = batchEvents[n-1].ID
		}
	}
}
