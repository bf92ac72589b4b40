package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/pgrelay/pgrelay/examples/templates/demo"
	"github.com/pgrelay/pgrelay/relay"
)

// runDemo parses `relay demo` flags and runs the demo.
func runDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := demo.DefaultConfig()
	cfg.Getenv = getenv
	fs := flag.NewFlagSet("relay demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.DatabaseURL, "database-url", getenv("DATABASE_URL"), "PostgreSQL server to use (its database is ignored) [$DATABASE_URL] (default: libpq defaults, host 127.0.0.1)")
	fs.StringVar(&cfg.Database, "db-name", cfg.Database, "demo database, DROPPED and re-created on every run")
	fs.StringVar(&cfg.Host, "host", cfg.Host, "address the relays listen on")
	fs.IntVar(&cfg.BasePort, "base-port", cfg.BasePort, "port of the first relay; the others follow")
	fs.IntVar(&cfg.Relays, "relays", cfg.Relays, "number of relays")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "pause between generated templates")
	fs.BoolVar(&cfg.Quiet, "quiet", false, "do not generate templates")
	logLevel := fs.String("log-level", "warn", "relay log level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", fs.Arg(0))
	}
	logCfg := relay.DefaultConfig()
	logCfg.LogLevel = *logLevel
	log := relay.NewLogger(stderr, logCfg)
	d, err := demo.Setup(ctx, cfg, log)
	if err != nil {
		return err
	}
	return d.Run(ctx, stdout)
}
