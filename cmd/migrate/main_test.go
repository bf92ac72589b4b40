package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

// binary is the migrate command built once for all tests, so they exercise
// exactly what users run: flag parsing, exit codes and stderr.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgrelay-migrate-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "migrate")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build migrate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// run executes the binary with args and DATABASE_URL set to url ("" unsets it).
func run(t *testing.T, url string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	if url != "" {
		env = append(env, "DATABASE_URL="+url)
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run migrate %v: %v", args, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

func TestFailuresExitNonZeroWithOneLineNamingTheProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{"bad URL", []string{"--database-url", "postgres://%zz@localhost/db", "up"}, 1, "migrate: bad database URL"},
		// localhost resolves to two addresses; the driver reports one line per
		// address and the command must still print one.
		{"unreachable server", []string{"--database-url", "postgres://localhost:1/x?connect_timeout=5", "status"}, 1, "migrate: connect to localhost:1/x"},
		{"down zero", []string{"down", "0"}, 2, `migrate: down: N must be a positive whole number, got "0"`},
		{"down with two arguments", []string{"down", "1", "2"}, 2, `migrate: down takes at most one argument`},
		{"unknown command", []string{"sideways"}, 2, `migrate: unknown command "sideways"`},
		{"no command", nil, 2, "migrate: no command given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, "host=127.0.0.1 port=1", tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit status = %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, tt.wantMsg) {
				t.Errorf("stderr = %q, want it to start with %q", r.stderr, tt.wantMsg)
			}
			if n := strings.Count(r.stderr, "\n"); n != 1 {
				t.Errorf("stderr has %d lines, want exactly 1: %q", n, r.stderr)
			}
		})
	}
}

func TestUpThenUpAgainThenDownEverythingSucceeds(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	steps := []struct {
		args       []string
		wantStdout string
	}{
		{[]string{"up"}, "applied 0001_relay_core\n"},
		{[]string{"up"}, "up to date: nothing to apply\n"},
		{[]string{"status"}, "applied  migration  0001_relay_core"},
		{[]string{"down", "99"}, "dropped schema relay"},
	}
	for _, s := range steps {
		r := run(t, db.URL, s.args...)
		if r.code != 0 {
			t.Fatalf("migrate %v: exit status %d, stderr %q", s.args, r.code, r.stderr)
		}
		if !strings.Contains(r.stdout, s.wantStdout) {
			t.Errorf("migrate %v: stdout = %q, want it to contain %q", s.args, r.stdout, s.wantStdout)
		}
	}
}

func TestHelpPrintsUsageAndSucceeds(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := run(t, "", args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "usage: migrate") {
			t.Errorf("migrate %v: exit %d, stdout %q; want 0 and the usage text", args, r.code, r.stdout)
		}
	}
}
