package relay

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Config is everything a relay can be told. Precedence: defaults, then
// environment, then flags; then Validate.
type Config struct {
	DatabaseURL       string // pool connections (application_name pgrelay)
	ListenDatabaseURL string // the LISTEN connection; defaults to DatabaseURL (use a direct URL when DatabaseURL goes through a transaction pooler)
	Addr              string
	// Name identifies this relay in logs and /readyz; default: hostname and
	// the port of Addr.
	Name string

	JWTSecret   string
	JWTIssuer   string
	JWTAudience string
	InsecureDev bool
	// WriteAPI serves POST /api/templates, the demo page's create form.
	WriteAPI bool

	CORSOrigins []string // allowed Origin values for browsers on other origins ("*" for any)

	MaxConnections        int // open streams on this relay, 0 = unlimited
	MaxConnectionsPerUser int // open streams of one subscriber on this relay, 0 = unlimited
	QueueSize             int // events queued per stream before it is closed as too slow

	Heartbeat    time.Duration // SSE comment / WebSocket ping interval
	WriteTimeout time.Duration // one write to a client
	IdleTimeout  time.Duration // how long a keep-alive connection may wait for its next request (it is no stream: MaxConnections does not count it)
	Retention    time.Duration // age after which events are pruned from the log
	// RetentionMaxEvents caps the log's length (0 = unlimited): older events
	// beyond it are pruned whatever their age.
	RetentionMaxEvents int
	// RetentionInterval is how often the sequencer prunes the log.
	RetentionInterval time.Duration
	ShutdownWait      time.Duration // how long shutdown waits for streams to close

	PollInterval time.Duration // sequencer poll while events flow
	IdleAfter    time.Duration // sequencer goes idle after this long without events
	IdlePoll     time.Duration // sequencer poll while idle
	SafetyPoll   time.Duration // every relay reads the log at least this often
	FilterResync time.Duration // full reload of connected subscribers' filters

	PoolSize int // maximum pool connections

	LogLevel  string // debug, info, warn, error
	LogFormat string // text or json

	PprofAddr string // if set, serve net/http/pprof here (for profiling; keep it on loopback)
	// MetricsAddr, if set, serves /metrics here instead of on Addr, so that
	// it can be kept off the public network.
	MetricsAddr string

	// foreignListAge is how long the relay's log reader trusts its list of
	// other databases' transactions (0: the default). Tests lengthen it.
	foreignListAge time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Addr:              ":8080",
		QueueSize:         1024,
		Heartbeat:         10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		Retention:         24 * time.Hour,
		RetentionInterval: time.Minute,
		ShutdownWait:      10 * time.Second,
		PollInterval:      2 * time.Millisecond,
		IdleAfter:         50 * time.Millisecond,
		IdlePoll:          100 * time.Millisecond,
		SafetyPoll:        time.Second,
		FilterResync:      30 * time.Second,
		PoolSize:          10,
		LogLevel:          "info",
		LogFormat:         "text",
	}
}

// setting describes one configuration value: its flag, environment variable
// and how to read it.
type setting struct {
	flag, env, usage string
	value            flag.Value
}

func (c *Config) settings() []setting {
	return []setting{
		{"database-url", "DATABASE_URL", "PostgreSQL connection URL (default: libpq defaults: PGHOST etc.)", (*stringValue)(&c.DatabaseURL)},
		{"listen-database-url", "RELAY_LISTEN_DATABASE_URL", "URL for the LISTEN connection; must reach PostgreSQL directly or through a session-mode pooler (default: --database-url)", (*stringValue)(&c.ListenDatabaseURL)},
		{"addr", "RELAY_ADDR", "HTTP listen address", (*stringValue)(&c.Addr)},
		{"name", "RELAY_NAME", "this relay's name in logs and /readyz (default: hostname:port)", (*stringValue)(&c.Name)},
		{"jwt-secret", "RELAY_JWT_SECRET", "HS256 secret that signs subscriber tokens (required unless --insecure-dev)", (*stringValue)(&c.JWTSecret)},
		{"jwt-issuer", "RELAY_JWT_ISSUER", "if set, tokens must carry this iss", (*stringValue)(&c.JWTIssuer)},
		{"jwt-audience", "RELAY_JWT_AUDIENCE", "if set, tokens must carry this aud", (*stringValue)(&c.JWTAudience)},
		{"insecure-dev", "RELAY_INSECURE_DEV", "development only: also accept ?user=ID without a token", (*boolValue)(&c.InsecureDev)},
		{"write-api", "RELAY_WRITE_API", "serve POST /api/templates, so the demo page at / can create templates of the example app as the token's user (default: off, the page is read-only)", (*boolValue)(&c.WriteAPI)},
		{"cors-origins", "RELAY_CORS_ORIGINS", "comma-separated origins allowed to connect from browsers on other origins (* for any)", (*listValue)(&c.CORSOrigins)},
		{"max-connections", "RELAY_MAX_CONNECTIONS", "maximum open streams on this relay (0: unlimited)", (*intValue)(&c.MaxConnections)},
		{"max-connections-per-user", "RELAY_MAX_CONNECTIONS_PER_USER", "maximum open streams of one subscriber on this relay (0: unlimited)", (*intValue)(&c.MaxConnectionsPerUser)},
		{"queue-size", "RELAY_QUEUE_SIZE", "events queued per stream before a slow client is disconnected", (*intValue)(&c.QueueSize)},
		{"heartbeat", "RELAY_HEARTBEAT", "keep-alive interval for idle streams (at most 15s)", (*durationValue)(&c.Heartbeat)},
		{"write-timeout", "RELAY_WRITE_TIMEOUT", "how long one write to a client may block", (*durationValue)(&c.WriteTimeout)},
		{"idle-timeout", "RELAY_IDLE_TIMEOUT", "close keep-alive HTTP connections idle between requests for this long (streams are not idle connections)", (*durationValue)(&c.IdleTimeout)},
		{"retention", "RELAY_RETENTION", "events older than this are pruned from the log", (*durationValue)(&c.Retention)},
		{"retention-max-events", "RELAY_RETENTION_MAX_EVENTS", "keep at most this many events in the log, pruning the oldest (0: unlimited)", (*intValue)(&c.RetentionMaxEvents)},
		{"retention-interval", "RELAY_RETENTION_INTERVAL", "how often the log is pruned (by one relay at a time: the sequencer)", (*durationValue)(&c.RetentionInterval)},
		{"shutdown-wait", "RELAY_SHUTDOWN_WAIT", "how long shutdown waits for streams to close", (*durationValue)(&c.ShutdownWait)},
		{"poll-interval", "RELAY_POLL_INTERVAL", "sequencer log poll interval while events flow", (*durationValue)(&c.PollInterval)},
		{"idle-after", "RELAY_IDLE_AFTER", "sequencer goes idle after this long without events", (*durationValue)(&c.IdleAfter)},
		{"idle-poll", "RELAY_IDLE_POLL", "sequencer log poll interval while idle", (*durationValue)(&c.IdlePoll)},
		{"safety-poll", "RELAY_SAFETY_POLL", "every relay reads the log at least this often", (*durationValue)(&c.SafetyPoll)},
		{"filter-resync", "RELAY_FILTER_RESYNC", "full reload interval of connected subscribers' filters", (*durationValue)(&c.FilterResync)},
		{"pool-size", "RELAY_POOL_SIZE", "maximum database connections in the pool", (*intValue)(&c.PoolSize)},
		{"log-level", "RELAY_LOG_LEVEL", "debug, info, warn or error", (*stringValue)(&c.LogLevel)},
		{"log-format", "RELAY_LOG_FORMAT", "text or json", (*stringValue)(&c.LogFormat)},
		{"pprof-addr", "RELAY_PPROF_ADDR", "serve Go profiles (net/http/pprof) on this address, e.g. 127.0.0.1:6060 (default: off)", (*stringValue)(&c.PprofAddr)},
		{"metrics-addr", "RELAY_METRICS_ADDR", "serve /metrics on this address, e.g. 10.0.0.5:9090, and not on --addr (default: on --addr)", (*stringValue)(&c.MetricsAddr)},
	}
}

// ApplyEnv reads the environment through getenv.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	var errs []error
	for _, s := range c.settings() {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", s.env, v, err))
			}
		}
	}
	return errors.Join(errs...)
}

// RegisterFlags adds one flag per setting to fs, each defaulting to c's
// current value and naming its environment variable in its usage.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	for _, s := range c.settings() {
		fs.Var(s.value, s.flag, s.usage+" [$"+s.env+"]")
	}
}

// Validate names every bad value.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.JWTSecret == "" && !c.InsecureDev {
		bad("no JWT secret: set --jwt-secret or RELAY_JWT_SECRET (or --insecure-dev for local development only)")
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 16 {
		bad("--jwt-secret is too short: use at least 16 characters")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		bad("--addr %q: want host:port or :port (%v)", c.Addr, err)
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"--heartbeat", c.Heartbeat}, {"--write-timeout", c.WriteTimeout}, {"--idle-timeout", c.IdleTimeout}, {"--retention", c.Retention},
		{"--shutdown-wait", c.ShutdownWait}, {"--retention-interval", c.RetentionInterval}, {"--poll-interval", c.PollInterval}, {"--idle-after", c.IdleAfter},
		{"--idle-poll", c.IdlePoll}, {"--safety-poll", c.SafetyPoll}, {"--filter-resync", c.FilterResync},
	}
	for _, p := range positive {
		if p.d <= 0 {
			bad("%s must be positive, got %s", p.name, p.d)
		}
	}
	if c.Heartbeat > 15*time.Second {
		bad("--heartbeat %s: at most 15s, or proxies may close idle streams", c.Heartbeat)
	}
	if c.QueueSize < 1 || c.QueueSize > 1<<20 {
		bad("--queue-size must be between 1 and %d, got %d", 1<<20, c.QueueSize)
	}
	if c.MaxConnections < 0 {
		bad("--max-connections must be 0 (unlimited) or positive, got %d", c.MaxConnections)
	}
	if c.MaxConnectionsPerUser < 0 {
		bad("--max-connections-per-user must be 0 (unlimited) or positive, got %d", c.MaxConnectionsPerUser)
	}
	if c.RetentionMaxEvents < 0 {
		bad("--retention-max-events must be 0 (unlimited) or positive, got %d", c.RetentionMaxEvents)
	}
	if strings.ContainsAny(c.Name, " \t\r\n") {
		bad("--name %q: no spaces, so log lines stay easy to filter", c.Name)
	}
	for _, u := range []struct{ flag, url string }{{"--database-url", c.DatabaseURL}, {"--listen-database-url", c.ListenDatabaseURL}} {
		if u.url == "" {
			continue
		}
		if _, err := pgconn.ParseConfig(u.url); err != nil {
			// pgconn's message may quote the URL, password included.
			bad("%s: not a valid PostgreSQL connection string or URL", u.flag)
		}
	}
	for _, o := range c.CORSOrigins {
		if !validOrigin(o) {
			bad("--cors-origins: %q is not an origin: want * or scheme://host[:port]", o)
		}
	}
	if c.PoolSize < 2 {
		bad("--pool-size must be at least 2, got %d", c.PoolSize)
	}
	if c.PprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			bad("--pprof-addr %q: want host:port (%v)", c.PprofAddr, err)
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("--metrics-addr %q: want host:port (%v)", c.MetricsAddr, err)
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch strings.ToLower(c.LogFormat) {
	case "text", "json":
	default:
		bad("--log-format %q: want text or json", c.LogFormat)
	}
	return errors.Join(errs...)
}

// validOrigin reports whether o is "*" or a browser origin
// (scheme://host[:port], no path).
func validOrigin(o string) bool {
	if o == "*" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		u.Path == "" && u.RawQuery == "" && u.Fragment == "" && u.User == nil
}

// InstanceName returns Name, or hostname:port when it is unset.
func (c *Config) InstanceName() string {
	if c.Name != "" {
		return c.Name
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	_, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return host
	}
	return net.JoinHostPort(host, port)
}

type stringValue string

func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }

type intValue int

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not a whole number")
	}
	*v = intValue(n)
	return nil
}

type boolValue bool

func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }
func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want true or false")
	}
	*v = boolValue(b)
	return nil
}

type durationValue time.Duration

func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a duration such as 500ms, 15s or 24h")
	}
	*v = durationValue(d)
	return nil
}

type listValue []string

func (v *listValue) String() string { return strings.Join(*v, ",") }
func (v *listValue) Set(s string) error {
	*v = nil
	for _, part := range strings.Split(s, ",") {
		if p := strings.TrimSpace(part); p != "" {
			*v = append(*v, p)
		}
	}
	return nil
}

// ParseConfig builds a Config from defaults, the environment (through
// getenv) and the command-line args, in that order of precedence, and
// validates it. usage receives the flag list for --help.
func ParseConfig(name string, args []string, getenv func(string) string, usage func(fs *flag.FlagSet)) (Config, error) {
	cfg := DefaultConfig()
	if err := cfg.ApplyEnv(getenv); err != nil {
		return cfg, err
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The parse error is returned, not printed: the caller reports it once.
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if usage != nil {
		fs.Usage = func() { usage(fs) }
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.Validate()
}

// ConfigDefaults lists every setting as "--flag  $ENV  default  usage", for
// help output.
func ConfigDefaults() []string {
	cfg := DefaultConfig()
	var lines []string
	for _, s := range cfg.settings() {
		def := s.value.String()
		if def == "" {
			def = "(none)"
		}
		lines = append(lines, fmt.Sprintf("  --%-26s $%-32s default %s\n      %s", s.flag, s.env, def, s.usage))
	}
	return lines
}
