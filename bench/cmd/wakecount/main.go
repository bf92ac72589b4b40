// Command wakecount counts the wake-up notifications capture triggers send
// (pgrelay_wake), for bench/wake-burst.sh: it listens until interrupted and
// prints how many arrived.
//
//	wakecount [--database-url URL]
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

	"github.com/jackc/pgx/v5"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wakecount:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("wakecount", flag.ContinueOnError)
	dbURL := fs.String("database-url", getenv("DATABASE_URL"), "PostgreSQL connection URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN pgrelay_wake"); err != nil {
		return fmt.Errorf("listen on pgrelay_wake: %w", err)
	}
	fmt.Fprintln(os.Stderr, "wakecount: listening")
	n := 0
	for {
		_, err := conn.WaitForNotification(ctx)
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			fmt.Fprintf(stdout, "wake-ups: %d\n", n)
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for wake-ups: %w", err)
		}
		n++
	}
}
