package migrate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const usage = `usage: migrate [--database-url URL] <command>

commands:
  up [--no-example]      apply all pending migrations, then (re)apply changed
                         definitions; --no-example installs the relay core
                         alone, without the template-sharing example app
  down [N]               roll back the last N migrations (default 1); rolling
                         back the last one removes every pgrelay object
  status [--no-example]  one line per migration and definition: applied or
                         pending (--no-example: the core's only)

The database URL falls back to DATABASE_URL, then to libpq defaults (PGHOST,
PGPORT, PGUSER, PGDATABASE, ...).
`

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// IsUsage reports whether err is a command-line mistake (exit status 2)
// rather than a failure while working.
func IsUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// Run is the migrate command: it parses args, connects and runs one
// subcommand, writing progress to stdout. getenv supplies DATABASE_URL.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dbURL := fs.String("database-url", "", "PostgreSQL connection URL (default: $DATABASE_URL, then libpq defaults)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return nil
		}
		return usageError{err.Error() + "\n" + usage}
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageError{"no command given\n" + usage}
	}
	cmd, cmdArgs := rest[0], rest[1:]
	steps := 1
	noExample := false
	switch cmd {
	case "up", "status":
		if len(cmdArgs) == 1 && (cmdArgs[0] == "--no-example" || cmdArgs[0] == "-no-example") {
			noExample, cmdArgs = true, nil
		}
		if len(cmdArgs) > 0 {
			return usageError{fmt.Sprintf("%s takes no arguments but --no-example, got %q", cmd, strings.Join(cmdArgs, " "))}
		}
	case "down":
		if len(cmdArgs) > 1 {
			return usageError{fmt.Sprintf("down takes at most one argument, got %q", strings.Join(cmdArgs, " "))}
		}
		if len(cmdArgs) == 1 {
			n, err := strconv.Atoi(cmdArgs[0])
			if err != nil || n < 1 {
				return usageError{fmt.Sprintf("down: N must be a positive whole number, got %q", cmdArgs[0])}
			}
			steps = n
		}
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usageError{fmt.Sprintf("unknown command %q (want up, down or status)", cmd)}
	}

	url := *dbURL
	if url == "" {
		url = getenv("DATABASE_URL")
	}
	load := Embedded
	if noExample {
		load = Core
	}
	src, err := load()
	if err != nil {
		return err
	}
	conn, err := Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	progress := func(format string, args ...any) { fmt.Fprintf(stdout, format+"\n", args...) }
	m := New(conn, src, progress)
	switch cmd {
	case "up":
		n, err := m.Up(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintln(stdout, "up to date: nothing to apply")
		}
	case "down":
		n, err := m.Down(ctx, steps)
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintln(stdout, "nothing to roll back: no migration is applied")
		}
	case "status":
		lines, err := m.Status(ctx)
		if err != nil {
			return err
		}
		for _, l := range lines {
			fmt.Fprintln(stdout, l)
		}
		capture, err := m.Capture(ctx)
		if err != nil {
			return err
		}
		if capture != "" {
			fmt.Fprintln(stdout, capture)
		}
	}
	return nil
}

// Connect opens a connection for migrating, named so operators can see it in
// pg_stat_activity. An empty url means libpq defaults.
func Connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "pgrelay-migrate"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return conn, nil
}
