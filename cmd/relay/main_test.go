package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/relay"
)

func TestHelpListsEverySettingWithItsEnvironmentVariableAndDefault(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run --help: got %v, want flag.ErrHelp (exit 0)", err)
	}
	help := stderr.String()
	cfg := relay.DefaultConfig()
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	envName := regexp.MustCompile(`\[\$([A-Z_]+)\]$`)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		m := envName.FindStringSubmatch(f.Usage)
		if m == nil {
			t.Errorf("--%s names no environment variable in its usage %q", f.Name, f.Usage)
			return
		}
		line := ""
		for _, l := range strings.Split(help, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "--"+f.Name+" ") {
				line = l
			}
		}
		if line == "" {
			t.Errorf("help does not list --%s:\n%s", f.Name, help)
			return
		}
		def := f.DefValue
		if def == "" {
			def = "(none)"
		}
		if !strings.Contains(line, "$"+m[1]) || !strings.Contains(line, "default "+def) {
			t.Errorf("help line for --%s is %q, want it to name $%s and default %s", f.Name, line, m[1], def)
		}
	})
	// The contract's settings, spelled as users type them.
	for _, want := range []string{"--database-url", "$DATABASE_URL", "--addr", "$RELAY_ADDR", "default :8080", "--jwt-secret", "$RELAY_JWT_SECRET", "--name", "$RELAY_NAME"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	if n < 25 {
		t.Errorf("only %d settings registered; expected every Config field", n)
	}
	if stdout.Len() != 0 {
		t.Errorf("help wrote to stdout: %q", stdout.String())
	}
}

func TestRelayRefusesToStartWithBadSettingsNamingThem(t *testing.T) {
	t.Parallel()
	env := map[string]string{"RELAY_QUEUE_SIZE": "0"}
	err := run(context.Background(), []string{"--heartbeat=1m"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("relay started without a secret and with bad values")
	}
	for _, want := range []string{"no JWT secret", "--queue-size", "--heartbeat"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
