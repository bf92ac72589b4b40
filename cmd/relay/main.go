// Command relay serves pgrelay event streams, issues development tokens and
// runs the demo.
//
//	relay [flags]                          serve
//	relay token --sub USER_ID [--ttl 1h]   print an HS256 token for USER_ID
//	relay demo [--base-port 3001]          the one-command demo (see README)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal exits at once, without draining.
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "relay: second signal, exiting now")
		os.Exit(1)
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "token":
			return token(args[1:], getenv, stdout, stderr)
		case "demo":
			return runDemo(ctx, args[1:], getenv, stdout, stderr)
		case "serve":
			args = args[1:]
		}
	}
	cfg, err := relay.ParseConfig("relay", args, getenv, func(fs *flag.FlagSet) {
		fmt.Fprintf(stderr, "usage: relay [flags]\n       relay token --sub USER_ID [--ttl 1h]\n       relay demo [--help]\n\nsettings (flag, environment variable, default):\n")
		for _, l := range relay.ConfigDefaults() {
			fmt.Fprintln(stderr, l)
		}
	})
	if err != nil {
		return err
	}
	log := relay.NewLogger(stderr, cfg)
	srv, err := relay.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.ListenAndRun(ctx)
}

func token(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("relay token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sub := fs.String("sub", "", "subscriber (user) id to put in the token (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	secret := fs.String("jwt-secret", getenv("RELAY_JWT_SECRET"), "HS256 signing secret [$RELAY_JWT_SECRET]")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" {
		return errors.New("token: --sub USER_ID is required")
	}
	if *ttl <= 0 {
		return fmt.Errorf("token: --ttl must be positive, got %s", *ttl)
	}
	if *secret == "" {
		return errors.New("token: no signing secret: set --jwt-secret or RELAY_JWT_SECRET")
	}
	tok, err := auth.Issue([]byte(*secret), *sub, *ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
