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
	"time"

	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
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
	for _, want := range []string{"--database-url", "$DATABASE_URL", "--addr", "$RELAY_ADDR", "default :8080", "--jwt-secret", "$RELAY_JWT_SECRET", "--jwks-url", "$RELAY_JWKS_URL", "--jwt-public-key-file", "$RELAY_JWT_PUBLIC_KEY_FILE", "--name", "$RELAY_NAME"} {
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
		t.Fatal("relay started without a key source and with bad values")
	}
	for _, want := range []string{"no JWT key source", "--queue-size", "--heartbeat"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestTokenCommandIssuesATokenThatExpiresAfterItsTTL(t *testing.T) {
	t.Parallel()
	const secret = "token-command-secret-0123456789"
	var stdout, stderr bytes.Buffer
	before := time.Now()
	err := run(context.Background(), []string{"token", "--sub", "zowi-1", "--ttl", "90s"},
		func(k string) string { return map[string]string{"RELAY_JWT_SECRET": secret}[k] }, &stdout, &stderr)
	if err != nil {
		t.Fatalf("relay token: %v (stderr %q)", err, stderr.String())
	}
	id, err := auth.NewVerifier([]byte(secret), auth.Options{}).VerifyIdentity(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("the printed token does not verify: %v", err)
	}
	if id.Subject != "zowi-1" {
		t.Errorf("sub %q, want zowi-1", id.Subject)
	}
	// exp has a resolution of one second.
	if lo, hi := before.Add(89*time.Second), time.Now().Add(90*time.Second); id.Expires.Before(lo) || id.Expires.After(hi) {
		t.Errorf("expires at %s, want between %s and %s", id.Expires, lo, hi)
	}
}
