package relay

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestGraphQLSettingsComeFromFlagsAndEnvironmentAndBadOnesAreNamed(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.GraphQLInitTimeout != 10*time.Second || cfg.GraphQLMaxSubscriptions != 64 {
		t.Errorf("defaults %s and %d, want 10s and 64", cfg.GraphQLInitTimeout, cfg.GraphQLMaxSubscriptions)
	}
	env := map[string]string{"RELAY_GRAPHQL_INIT_TIMEOUT": "3s"}
	if err := cfg.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--graphql-max-subscriptions", "5"}); err != nil {
		t.Fatal(err)
	}
	if cfg.GraphQLInitTimeout != 3*time.Second || cfg.GraphQLMaxSubscriptions != 5 {
		t.Errorf("got %s and %d, want 3s from the environment and 5 from the flag", cfg.GraphQLInitTimeout, cfg.GraphQLMaxSubscriptions)
	}
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.GraphQLInitTimeout = 0 }, "--graphql-init-timeout must be positive"},
		{func(c *Config) { c.GraphQLMaxSubscriptions = 0 }, "--graphql-max-subscriptions must be between 1 and 10000, got 0"},
	} {
		c := DefaultConfig()
		c.JWTSecret = "a-secret-of-at-least-some-length-0123456789"
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
		}
	}
}
