package relay

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
)

// sampleValues returns an environment value and a different flag value that
// setting s accepts.
func sampleValues(t *testing.T, s setting) (env, flagArg string) {
	t.Helper()
	switch s.value.(type) {
	case *stringValue:
		return "from-env", "from-flag"
	case *intValue:
		return "7", "9"
	case *boolValue:
		return "true", "false"
	case *durationValue:
		return "3s", "4s"
	case *listValue:
		return "https://env.example", "https://flag.example"
	case *byteSizeValue:
		return "3MiB", "512KiB"
	case *repeatedValue:
		return "https://env.example/jwks", "https://flag.example/jwks"
	}
	t.Fatalf("setting --%s has a value type this test does not know: %T", s.flag, s.value)
	return "", ""
}

func TestEverySettingTakesFlagOverEnvOverDefault(t *testing.T) {
	t.Parallel()
	for _, s := range new(Config).settings() {
		t.Run(s.flag, func(t *testing.T) {
			envValue, flagValue := sampleValues(t, s)
			read := func(env map[string]string, args []string) string {
				t.Helper()
				cfg := DefaultConfig()
				if err := cfg.ApplyEnv(func(k string) string { return env[k] }); err != nil {
					t.Fatalf("apply env %v: %v", env, err)
				}
				fs := flag.NewFlagSet("relay", flag.ContinueOnError)
				fs.SetOutput(io.Discard)
				cfg.RegisterFlags(fs)
				if err := fs.Parse(args); err != nil {
					t.Fatalf("parse %v: %v", args, err)
				}
				for _, c := range cfg.settings() {
					if c.flag == s.flag {
						return c.value.String()
					}
				}
				t.Fatalf("setting --%s vanished", s.flag)
				return ""
			}
			def := read(nil, nil)
			cfg := DefaultConfig()
			for _, c := range cfg.settings() {
				if c.flag == s.flag && c.value.String() != def {
					t.Errorf("with neither env nor flag: got %q, want the default %q", def, c.value.String())
				}
			}
			env := map[string]string{s.env: envValue}
			if got := read(env, nil); got != normalise(s, envValue) {
				t.Errorf("$%s=%s: got %q, want %q", s.env, envValue, got, normalise(s, envValue))
			}
			arg := "--" + s.flag + "=" + flagValue
			if got := read(env, []string{arg}); got != normalise(s, flagValue) {
				t.Errorf("$%s=%s and %s: got %q, want the flag's %q", s.env, envValue, arg, got, normalise(s, flagValue))
			}
		})
	}
}

// normalise returns how s prints value once set.
func normalise(s setting, value string) string {
	if _, ok := s.value.(*durationValue); ok {
		d, _ := time.ParseDuration(value)
		return d.String()
	}
	return value
}

func TestParseConfigAppliesDefaultsEnvFlagsInOrderAndValidates(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"RELAY_JWT_SECRET":      "0123456789abcdef-env",
		"RELAY_ADDR":            "127.0.0.1:9000",
		"RELAY_MAX_CONNECTIONS": "100",
		"RELAY_CORS_ORIGINS":    "https://a.example, https://b.example",
		"RELAY_QUEUE_BYTES":     "16MiB",
	}
	cfg, err := ParseConfig("relay", []string{"--addr", ":9100", "--queue-size=64", "--queue-bytes=512KiB"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"addr (flag over env)", cfg.Addr, ":9100"},
		{"queue size (flag over default)", cfg.QueueSize, 64},
		{"max connections (env over default)", cfg.MaxConnections, 100},
		{"max connections per user (default)", cfg.MaxConnectionsPerUser, 100},
		{"queue bytes (flag over env)", cfg.QueueBytes, 512 << 10},
		{"jwt secret (env)", cfg.JWTSecret, "0123456789abcdef-env"},
		{"cors origins (env list)", strings.Join(cfg.CORSOrigins, "|"), "https://a.example|https://b.example"},
		{"heartbeat (default)", cfg.Heartbeat, 10 * time.Second},
		{"retention interval (default)", cfg.RetentionInterval, time.Minute},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseConfigRejectsUnparsableValuesNamingThem(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"RELAY_QUEUE_SIZE": "lots"}, nil, `RELAY_QUEUE_SIZE="lots"`},
		{map[string]string{"RELAY_QUEUE_BYTES": "8 parsecs"}, nil, `RELAY_QUEUE_BYTES="8 parsecs"`},
		{nil, []string{"--queue-bytes=1.5MiB"}, "-queue-bytes"},
		{map[string]string{"RELAY_HEARTBEAT": "5"}, nil, `RELAY_HEARTBEAT="5"`},
		{map[string]string{"RELAY_INSECURE_DEV": "sure"}, nil, `RELAY_INSECURE_DEV="sure"`},
		{nil, []string{"--max-connections=many"}, "-max-connections"},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
		{map[string]string{"RELAY_JWT_SECRET": "0123456789abcdef"}, []string{"extra"}, `unexpected argument "extra"`},
	}
	for _, c := range cases {
		_, err := ParseConfig("relay", c.args, func(k string) string { return c.env[k] }, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("env %v args %v: got error %v, want one naming %s", c.env, c.args, err, c.want)
		}
	}
}

func TestValidateNamesEveryBadValue(t *testing.T) {
	t.Parallel()
	valid := DefaultConfig()
	valid.JWTSecret = "0123456789abcdef"
	if err := valid.Validate(); err != nil {
		t.Fatalf("defaults plus a secret should be valid: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no secret", func(c *Config) { c.JWTSecret = "" }, "no JWT key source"},
		{"short secret", func(c *Config) { c.JWTSecret = "short" }, "--jwt-secret is too short"},
		{"jwks url without an issuer", func(c *Config) { c.JWKSURLs = []string{"https://idp.example/jwks"} }, `--jwks-url "https://idp.example/jwks": no issuer`},
		{"jwks url over plain http", func(c *Config) { c.JWKSURLs = []string{"https://idp.example/=http://idp.example/jwks"} }, `--jwks-url "https://idp.example/=http://idp.example/jwks": http is allowed only to localhost`},
		{"jwks url not a url", func(c *Config) { c.JWKSURLs = []string{"iss=https://"} }, `--jwks-url "iss=https://": want an absolute URL`},
		{"jwks refresh", func(c *Config) { c.JWKSRefresh = time.Second }, "--jwks-refresh must be between 1m and 24h"},
		{"subject claim", func(c *Config) { c.JWTSubjectClaim = "" }, "--jwt-subject-claim"},
		{"addr", func(c *Config) { c.Addr = "8080" }, "--addr"},
		{"name", func(c *Config) { c.Name = "relay one" }, "--name"},
		{"database url", func(c *Config) { c.DatabaseURL = "postgres://h:notaport/db" }, "--database-url"},
		{"listen database url", func(c *Config) { c.ListenDatabaseURL = "postgres://h:notaport/db" }, "--listen-database-url"},
		{"cors origin with path", func(c *Config) { c.CORSOrigins = []string{"https://ok.example", "https://x.example/app"} }, `--cors-origins: "https://x.example/app"`},
		{"max connections", func(c *Config) { c.MaxConnections = -1 }, "--max-connections must"},
		{"max connections per user", func(c *Config) { c.MaxConnectionsPerUser = -2 }, "--max-connections-per-user"},
		{"queue size", func(c *Config) { c.QueueSize = 0 }, "--queue-size"},
		{"queue bytes", func(c *Config) { c.QueueBytes = 1000 }, "--queue-bytes must be between 64KiB and 1GiB, got 1000"},
		{"heartbeat zero", func(c *Config) { c.Heartbeat = 0 }, "--heartbeat"},
		{"heartbeat too long", func(c *Config) { c.Heartbeat = time.Minute }, "--heartbeat 1m0s"},
		{"write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, "--write-timeout"},
		{"idle timeout", func(c *Config) { c.IdleTimeout = 0 }, "--idle-timeout"},
		{"retention", func(c *Config) { c.Retention = 0 }, "--retention must"},
		{"retention max events", func(c *Config) { c.RetentionMaxEvents = -1 }, "--retention-max-events"},
		{"retention interval", func(c *Config) { c.RetentionInterval = 0 }, "--retention-interval"},
		{"shutdown wait", func(c *Config) { c.ShutdownWait = 0 }, "--shutdown-wait"},
		{"poll interval", func(c *Config) { c.PollInterval = 0 }, "--poll-interval"},
		{"poll interval max", func(c *Config) { c.PollIntervalMax = -time.Millisecond }, "--poll-interval-max"},
		{"poll stretch rate", func(c *Config) { c.PollStretchRate = 0 }, "--poll-stretch-rate must be between 1 and 1000000 events per second, got 0"},
		{"idle after", func(c *Config) { c.IdleAfter = 0 }, "--idle-after"},
		{"idle poll", func(c *Config) { c.IdlePoll = 0 }, "--idle-poll"},
		{"safety poll", func(c *Config) { c.SafetyPoll = 0 }, "--safety-poll"},
		{"filter resync", func(c *Config) { c.FilterResync = 0 }, "--filter-resync"},
		{"pool size", func(c *Config) { c.PoolSize = 1 }, "--pool-size"},
		{"metrics addr", func(c *Config) { c.MetricsAddr = "9090" }, "--metrics-addr"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "--log-level"},
		{"log format", func(c *Config) { c.LogFormat = "xml" }, "--log-format"},
	}
	all := valid
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := valid
			c.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %s", err, c.want)
			}
		})
		if c.name != "no secret" {
			c.mutate(&all)
		}
	}
	// Every bad value at once: each is named, not just the first.
	err := all.Validate()
	if err == nil {
		t.Fatal("a configuration with every value bad validated")
	}
	for _, c := range cases {
		switch c.name {
		case "no secret", "heartbeat zero", "jwks url without an issuer", "jwks url over plain http":
			continue // replaced by other cases on the same field
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("combined error does not name %s:\n%v", c.want, err)
		}
	}
}

func TestAJWKSURLIsBoundToExactlyOneIssuer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		issuer  string
		entries []string
		want    []auth.JWKS
		err     string
	}{
		{"ISSUER=URL", "", []string{"https://a.example/=https://a.example/.well-known/jwks.json", "https://b.example=http://127.0.0.1:9/jwks?x=1"},
			[]auth.JWKS{{Issuer: "https://a.example/", URL: "https://a.example/.well-known/jwks.json"}, {Issuer: "https://b.example", URL: "http://127.0.0.1:9/jwks?x=1"}}, ""},
		{"a plain URL takes --jwt-issuer", "https://a.example/", []string{"https://a.example/jwks?tenant=a"},
			[]auth.JWKS{{Issuer: "https://a.example/", URL: "https://a.example/jwks?tenant=a"}}, ""},
		{"ISSUER=URL agreeing with --jwt-issuer", "https://a.example/", []string{"https://a.example/=https://a.example/jwks"},
			[]auth.JWKS{{Issuer: "https://a.example/", URL: "https://a.example/jwks"}}, ""},
		{"a plain URL without --jwt-issuer", "", []string{"https://a.example/jwks"}, nil, "no issuer"},
		{"ISSUER=URL other than --jwt-issuer", "https://a.example/", []string{"https://b.example/=https://b.example/jwks"}, nil, `accepts only "https://a.example/"`},
		{"plain http to another host", "https://a.example/", []string{"http://a.example/jwks"}, nil, "http is allowed only to localhost"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.JWTIssuer, cfg.JWKSURLs = c.issuer, c.entries
			got, errs := cfg.jwksSources()
			if c.err != "" {
				if len(errs) != 1 || !strings.Contains(errs[0].Error(), c.err) {
					t.Fatalf("got %v, %v; want one error saying %q", got, errs, c.err)
				}
				return
			}
			if len(errs) > 0 || !slices.Equal(got, c.want) {
				t.Fatalf("got %v, %v; want %v", got, errs, c.want)
			}
		})
	}
}

func TestAnyKeySourceLetsTheRelayStart(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"secret", func(c *Config) { c.JWTSecret = "0123456789abcdef" }},
		{"jwks url", func(c *Config) { c.JWKSURLs = []string{"https://idp.example/=https://idp.example/jwks"} }},
		{"public key file", func(c *Config) { c.JWTPublicKeyFiles = []string{"/etc/pgrelay/keys.pem"} }},
		{"all three", func(c *Config) {
			c.JWTSecret, c.JWTPublicKeyFiles = "0123456789abcdef", []string{"/etc/pgrelay/keys.pem"}
			c.JWKSURLs = []string{"https://idp.example/=https://idp.example/jwks"}
		}},
		{"insecure dev", func(c *Config) { c.InsecureDev = true }},
	} {
		cfg := DefaultConfig()
		c.mutate(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	cfg := DefaultConfig()
	cfg.JWTIssuer, cfg.JWTPublicKeyFiles = "https://idp.example/", []string{"/etc/pgrelay/keys.pem"}
	cfg.JWKSURLs = []string{"https://idp.example/jwks"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "its keys would verify no token") {
		t.Errorf("a public key file beside a JWKS of the only accepted issuer: %v, want an error saying the file is unused", err)
	}
}

func TestRepeatedJWKSURLFlagsAddUpAndReplaceTheEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{"RELAY_JWKS_URL": "https://a.example=https://a.example/jwks, https://b.example=https://b.example/jwks"}
	cfg, err := ParseConfig("relay", nil, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.JWKSURLs, " "); got != "https://a.example=https://a.example/jwks https://b.example=https://b.example/jwks" {
		t.Errorf("from the environment: %s", got)
	}
	cfg, err = ParseConfig("relay", []string{"--jwks-url", "https://c.example=https://c.example/jwks", "--jwks-url=https://d.example=https://d.example/jwks"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.JWKSURLs, " "); got != "https://c.example=https://c.example/jwks https://d.example=https://d.example/jwks" {
		t.Errorf("from two flags over the environment: %s", got)
	}
}

func TestValidateDoesNotEchoDatabasePasswords(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.JWTSecret = "0123456789abcdef"
	cfg.DatabaseURL = "postgres://u:sup3rsecret@h:badport/db"
	err := cfg.Validate()
	if err == nil {
		t.Fatal("bad URL accepted")
	}
	if strings.Contains(err.Error(), "sup3rsecret") {
		t.Errorf("validation error shows the password: %v", err)
	}
}

func TestInstanceNameDefaultsToHostAndPort(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.Addr = "0.0.0.0:8123"
	if got := cfg.InstanceName(); !strings.HasSuffix(got, ":8123") || strings.HasPrefix(got, ":") {
		t.Errorf("InstanceName() = %q, want hostname:8123", got)
	}
	cfg.Name = "relay-a"
	if got := cfg.InstanceName(); got != "relay-a" {
		t.Errorf("InstanceName() = %q, want the configured relay-a", got)
	}
}

func TestByteSizesReadWithOrWithoutABinaryUnit(t *testing.T) {
	t.Parallel()
	cases := map[string]int{
		"1048576": 1 << 20, "64KiB": 64 << 10, "64k": 64 << 10, "8MiB": 8 << 20, "8MB": 8 << 20,
		" 2 GiB ": 2 << 30, "512B": 512,
	}
	for in, want := range cases {
		var v byteSizeValue
		if err := v.Set(in); err != nil || int(v) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, int(v), err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "8TiB", "1.5MiB", "8 mebibytes"} {
		var v byteSizeValue
		if err := v.Set(in); err == nil {
			t.Errorf("Set(%q) accepted as %d bytes", in, int(v))
		}
	}
	for n, want := range map[int]string{8 << 20: "8MiB", 3 << 10: "3KiB", 1536: "1536", 1000: "1000", 0: "0"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}
