package migrate_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/internal/migrate"
	"github.com/pgrelay/pgrelay/internal/pgtest"
)

func TestRunRejectsCommandLineMistakesAsUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command given"},
		{"unknown command", []string{"sideways"}, `unknown command "sideways"`},
		{"unknown flag", []string{"--verbose", "up"}, "flag provided but not defined: -verbose"},
		{"down zero", []string{"down", "0"}, `N must be a positive whole number, got "0"`},
		{"down negative", []string{"down", "-3"}, `N must be a positive whole number, got "-3"`},
		{"down not a number", []string{"down", "all"}, `N must be a positive whole number, got "all"`},
		{"down two arguments", []string{"down", "1", "2"}, `down takes at most one argument, got "1 2"`},
		{"up with an argument", []string{"up", "now"}, `up takes no arguments but --no-example, got "now"`},
		{"status with an argument", []string{"status", "-v"}, `status takes no arguments but --no-example, got "-v"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			// The URL points nowhere: a usage error must be found before connecting.
			env := func(string) string { return "host=127.0.0.1 port=1" }
			err := migrate.Run(context.Background(), tt.args, env, &stdout, &stderr)
			if err == nil {
				t.Fatalf("migrate %q succeeded, want a usage error", tt.args)
			}
			if !migrate.IsUsage(err) {
				t.Errorf("migrate %q: err = %v, want a usage error (exit status 2)", tt.args, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("migrate %q: err = %q, want it to contain %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestRunReportsConnectionProblemsAsFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		url  string
		want string
	}{
		{"malformed URL", "postgres://%zz@localhost/db", "bad database URL"},
		{"port not a number", "host=127.0.0.1 port=fivefourthreetwo", "bad database URL"},
		{"server not listening", "host=127.0.0.1 port=1 dbname=x connect_timeout=5", "connect to 127.0.0.1:1/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := migrate.Run(context.Background(), []string{"--database-url", tt.url, "up"},
				func(string) string { return "" }, &stdout, &stderr)
			if err == nil {
				t.Fatalf("up against %q succeeded, want an error", tt.url)
			}
			if migrate.IsUsage(err) {
				t.Errorf("up against %q: %v is a usage error, want a failure (exit status 1)", tt.url, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("up against %q: err = %q, want it to contain %q", tt.url, err, tt.want)
			}
		})
	}
}

func TestRunTakesTheURLFromDATABASE_URLWhenNoFlagIsGiven(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	var stdout, stderr bytes.Buffer
	env := func(key string) string {
		if key == "DATABASE_URL" {
			return db.URL
		}
		return ""
	}
	if err := migrate.Run(context.Background(), []string{"up"}, env, &stdout, &stderr); err != nil {
		t.Fatalf("up: %v", err)
	}
	if !strings.Contains(stdout.String(), "applied 0001_relay_core") {
		t.Errorf("up output = %q, want it to report applying 0001_relay_core", stdout.String())
	}
}

func TestDownOnAnEmptyDatabaseSaysThereIsNothingToRollBack(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	out := mustRunCLI(t, db, "down")
	if want := "nothing to roll back: no migration is applied\n"; out != want {
		t.Errorf("down output = %q, want %q", out, want)
	}
}
