// Command migrate applies pgrelay's migrations and repeatable definitions.
//
//	migrate [--database-url URL] up          apply pending migrations, then changed definitions
//	migrate [--database-url URL] down [N]    roll back the last N migrations (default 1)
//	migrate [--database-url URL] status      one line per migration and definition
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pgrelay/pgrelay/internal/migrate"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := migrate.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		// One line: driver errors can span several (one per address tried).
		msg := strings.Join(strings.Fields(err.Error()), " ")
		fmt.Fprintln(os.Stderr, "migrate:", msg)
		os.Exit(exitCode(err))
	}
}

func exitCode(err error) int {
	if migrate.IsUsage(err) {
		return 2
	}
	return 1
}
