// Command relaybench drives relays with subscribers and a producer and
// reports commit→client latency, deliveries/s, relay memory per subscriber
// and errors. See docs/performance.md.
//
//	relaybench --url http://127.0.0.1:8080 --jwt-secret S --subscribers 10000 --audience 100 --rate 200
//	relaybench --spawn 1 --jwt-secret S --subscribers 10000 --audience 100 --rate 200
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

	"github.com/pgrelay/pgrelay/internal/relaybench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if os.Getenv(relaybench.WorkerEnv) != "" {
		// Started by relaybench itself to hold a share of the streams.
		err = relaybench.RunWorker(ctx, os.Stdin, os.Stdout)
	} else {
		err = run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	}
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "relaybench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("relaybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, relaybench.Usage)
		fs.PrintDefaults()
	}
	cfg, err := relaybench.ParseFlags(fs, args, getenv)
	if err != nil {
		return err
	}
	rep, err := relaybench.Run(ctx, cfg, stderr)
	if rep != nil {
		rep.Label = cfg.Label
		if werr := rep.WriteTable(stdout); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}
