package relay

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/sequencer"
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

	JWTSecret string
	// JWKSURLs are identity providers' JWK sets, each "URL" (for
	// JWTIssuer) or "ISSUER=URL".
	JWKSURLs []string
	// JWTPublicKeyFiles hold PEM public keys of issuers without a JWKS.
	JWTPublicKeyFiles []string
	JWTIssuer         string
	JWTAudience       string
	// JWTSubjectClaim is the claim that holds the subscriber id.
	JWTSubjectClaim string
	// JWKSRefresh is how often each JWKS is fetched again.
	JWKSRefresh time.Duration
	InsecureDev bool
	// WriteAPI serves POST /api/templates, the demo page's create form.
	WriteAPI bool

	CORSOrigins []string // allowed Origin values for browsers on other origins ("*" for any)

	MaxConnections        int // open streams on this relay, 0 = unlimited
	MaxConnectionsPerUser int // open streams of one subscriber on this relay, 0 = unlimited
	// MaxOpening bounds the streams opening at once, working or waiting for
	// their turn (0 = unlimited): one more is answered 503 with Retry-After
	// at once (see limit.Opening).
	MaxOpening int
	// OpenConcurrency is how many resuming streams load their filter and
	// start their replay at once (fresh streams take no turn); 0 means
	// PoolSize-2 (at least 1), so that the log reader and filter refreshes
	// always find a pool connection.
	OpenConcurrency int
	// OpenWait is how long an opening stream may wait for its turn before
	// it is answered 503 with Retry-After.
	OpenWait  time.Duration
	QueueSize int // events queued per stream before it is closed as too slow
	// QueueBytes bounds the bytes of rows queued per stream the same way
	// (an event larger than it still reaches a client that keeps up), and
	// the bytes of rows one replay query reads.
	QueueBytes int
	// ReplayCacheBytes bounds the window of the recent log each relay
	// keeps in memory, from which resuming streams replay without reading
	// the log (0: none; see replay.Window).
	ReplayCacheBytes int

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
	// GraphQLInitTimeout is how long a GraphQL client may take to send
	// connection_init after its WebSocket handshake (close 4408 after).
	GraphQLInitTimeout time.Duration
	// GraphQLMaxSubscriptions bounds the subscriptions of one GraphQL
	// connection.
	GraphQLMaxSubscriptions int

	PollInterval time.Duration // sequencer poll while events flow
	// PollIntervalMax is the longest the sequencer's poll interval
	// stretches to while events arrive at PollStretchRate or faster; at
	// or below PollInterval (a configuration that only raised
	// PollInterval), it never stretches.
	PollIntervalMax time.Duration
	// PollStretchRate is the arrival rate, in events per second, from
	// which the poll interval stretches.
	PollStretchRate int
	IdleAfter       time.Duration // sequencer goes idle after this long without events
	IdlePoll        time.Duration // sequencer poll while idle
	SafetyPoll      time.Duration // every relay reads the log at least this often
	// ElectionInterval is how often a relay that is not the sequencer tries
	// to become it: it bounds how long the role stays empty after the
	// sequencer's session ends.
	ElectionInterval time.Duration
	FilterResync     time.Duration // full reload of connected subscribers' filters

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
	// jwksRefresh and jwksMinRefetch, when set, replace JWKSRefresh and the
	// one-minute bound on refetches for unknown kids, below what Validate
	// allows. Tests shorten them.
	jwksRefresh, jwksMinRefetch time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Addr:                    ":8080",
		JWTSubjectClaim:         "sub",
		JWKSRefresh:             auth.DefaultRefresh,
		MaxConnections:          10000,
		MaxConnectionsPerUser:   100,
		MaxOpening:              500,
		OpenWait:                5 * time.Second,
		QueueSize:               1024,
		QueueBytes:              8 << 20,
		ReplayCacheBytes:        64 << 20,
		Heartbeat:               10 * time.Second,
		WriteTimeout:            10 * time.Second,
		IdleTimeout:             90 * time.Second,
		Retention:               24 * time.Hour,
		RetentionInterval:       time.Minute,
		ShutdownWait:            10 * time.Second,
		GraphQLInitTimeout:      10 * time.Second,
		GraphQLMaxSubscriptions: 64,
		PollInterval:            2 * time.Millisecond,
		PollIntervalMax:         10 * time.Millisecond,
		PollStretchRate:         sequencer.DefaultStretchRate,
		IdleAfter:               50 * time.Millisecond,
		IdlePoll:                100 * time.Millisecond,
		SafetyPoll:              time.Second,
		ElectionInterval:        100 * time.Millisecond,
		FilterResync:            30 * time.Second,
		PoolSize:                10,
		LogLevel:                "info",
		LogFormat:               "text",
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
		{"jwt-secret", "RELAY_JWT_SECRET", "HS256 secret that signs subscriber tokens (this, --jwks-url or --jwt-public-key-file is required unless --insecure-dev)", (*stringValue)(&c.JWTSecret)},
		{"jwks-url", "RELAY_JWKS_URL", "JWK set of an identity provider whose RS/PS/ES/EdDSA tokens are accepted, as ISSUER=URL, or URL for the issuer of --jwt-issuer; https (http only to loopback); repeatable, comma-separated in the environment", &repeatedValue{list: &c.JWKSURLs}},
		{"jwks-refresh", "RELAY_JWKS_REFRESH", "how often each --jwks-url is fetched again (1m to 24h); a token with an unknown kid also causes a fetch, at most once a minute", (*durationValue)(&c.JWKSRefresh)},
		{"jwt-public-key-file", "RELAY_JWT_PUBLIC_KEY_FILE", "PEM file of public keys that sign subscriber tokens of issuers without a --jwks-url; repeatable, comma-separated in the environment", &repeatedValue{list: &c.JWTPublicKeyFiles}},
		{"jwt-issuer", "RELAY_JWT_ISSUER", "if set, tokens must carry this iss, whichever key signed them", (*stringValue)(&c.JWTIssuer)},
		{"jwt-audience", "RELAY_JWT_AUDIENCE", "if set, tokens must carry this aud, whichever key signed them", (*stringValue)(&c.JWTAudience)},
		{"jwt-subject-claim", "RELAY_JWT_SUBJECT_CLAIM", "the token claim that holds the subscriber (user) id", (*stringValue)(&c.JWTSubjectClaim)},
		{"insecure-dev", "RELAY_INSECURE_DEV", "development only: also accept ?user=ID without a token", (*boolValue)(&c.InsecureDev)},
		{"write-api", "RELAY_WRITE_API", "serve POST /api/templates, so the demo page at / can create templates of the example app as the token's user (default: off, the page is read-only)", (*boolValue)(&c.WriteAPI)},
		{"cors-origins", "RELAY_CORS_ORIGINS", "comma-separated origins allowed to connect from browsers on other origins (* for any)", (*listValue)(&c.CORSOrigins)},
		{"max-connections", "RELAY_MAX_CONNECTIONS", "maximum open streams on this relay; more get 503 (0: unlimited)", (*intValue)(&c.MaxConnections)},
		{"max-connections-per-user", "RELAY_MAX_CONNECTIONS_PER_USER", "maximum open streams of one subscriber on this relay; more get 429 (0: unlimited)", (*intValue)(&c.MaxConnectionsPerUser)},
		{"max-opening", "RELAY_MAX_OPENING", "maximum streams opening at once (loading their filter and starting their replay, or waiting for their turn to); more get 503 with Retry-After at once, so a reconnect storm is answered instead of timing out (0: unlimited)", (*intValue)(&c.MaxOpening)},
		{"open-concurrency", "RELAY_OPEN_CONCURRENCY", "resuming streams that load their filter and start their replay at the same time; others wait their turn (streams that do not resume, or resume from the replay cache, take no turn but count toward --max-opening) (0: --pool-size minus 2, at least 1)", (*intValue)(&c.OpenConcurrency)},
		{"open-wait", "RELAY_OPEN_WAIT", "how long an opening stream may wait for its turn before it gets 503 with Retry-After", (*durationValue)(&c.OpenWait)},
		{"queue-size", "RELAY_QUEUE_SIZE", "events queued per stream before a slow client is disconnected", (*intValue)(&c.QueueSize)},
		{"queue-bytes", "RELAY_QUEUE_BYTES", "bytes of rows queued per stream before a slow client is disconnected, and read by one replay query (e.g. 8MiB, 512KiB)", (*byteSizeValue)(&c.QueueBytes)},
		{"replay-cache-bytes", "RELAY_REPLAY_CACHE_BYTES", "the newest events of the log kept in memory, counted with their audience and encodings, so that streams resuming from the recent past (a reconnect storm) replay from there instead of each reading the log (0: none, every replay reads the log)", (*byteSizeValue)(&c.ReplayCacheBytes)},
		{"heartbeat", "RELAY_HEARTBEAT", "keep-alive interval for idle streams (at most 15s)", (*durationValue)(&c.Heartbeat)},
		{"write-timeout", "RELAY_WRITE_TIMEOUT", "how long one write to a client may block", (*durationValue)(&c.WriteTimeout)},
		{"idle-timeout", "RELAY_IDLE_TIMEOUT", "close keep-alive HTTP connections idle between requests for this long (streams are not idle connections)", (*durationValue)(&c.IdleTimeout)},
		{"retention", "RELAY_RETENTION", "events older than this are pruned from the log", (*durationValue)(&c.Retention)},
		{"retention-max-events", "RELAY_RETENTION_MAX_EVENTS", "keep at most this many events in the log, pruning the oldest (0: unlimited)", (*intValue)(&c.RetentionMaxEvents)},
		{"retention-interval", "RELAY_RETENTION_INTERVAL", "how often the log is pruned (by one relay at a time: the sequencer)", (*durationValue)(&c.RetentionInterval)},
		{"shutdown-wait", "RELAY_SHUTDOWN_WAIT", "how long shutdown waits for streams to close", (*durationValue)(&c.ShutdownWait)},
		{"graphql-init-timeout", "RELAY_GRAPHQL_INIT_TIMEOUT", "how long a GraphQL client may take to send connection_init after connecting to /graphql (then it is closed with 4408)", (*durationValue)(&c.GraphQLInitTimeout)},
		{"graphql-max-subscriptions", "RELAY_GRAPHQL_MAX_SUBSCRIPTIONS", "maximum subscriptions on one /graphql connection (each is also a stream under --max-connections-per-user)", (*intValue)(&c.GraphQLMaxSubscriptions)},
		{"poll-interval", "RELAY_POLL_INTERVAL", "sequencer log poll interval while events flow", (*durationValue)(&c.PollInterval)},
		{"poll-interval-max", "RELAY_POLL_INTERVAL_MAX", "longest sequencer poll interval: it doubles towards this while polls find events arriving at --poll-stretch-rate or faster, and returns to --poll-interval at the first poll that does not, so it adds at most the difference to an event's delay (at most --poll-interval: never stretch)", (*durationValue)(&c.PollIntervalMax)},
		{"poll-stretch-rate", "RELAY_POLL_STRETCH_RATE", "events per second from which the sequencer's poll interval stretches towards --poll-interval-max", (*intValue)(&c.PollStretchRate)},
		{"idle-after", "RELAY_IDLE_AFTER", "sequencer goes idle after this long without events", (*durationValue)(&c.IdleAfter)},
		{"idle-poll", "RELAY_IDLE_POLL", "sequencer log poll interval while idle", (*durationValue)(&c.IdlePoll)},
		{"safety-poll", "RELAY_SAFETY_POLL", "every relay reads the log at least this often", (*durationValue)(&c.SafetyPoll)},
		{"election-interval", "RELAY_ELECTION_INTERVAL", "how often a relay tries to become the sequencer while the role is taken (bounds the failover time)", (*durationValue)(&c.ElectionInterval)},
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
	if c.JWTSecret == "" && len(c.JWKSURLs) == 0 && len(c.JWTPublicKeyFiles) == 0 && !c.InsecureDev {
		bad("no JWT key source: set --jwt-secret, --jwks-url or --jwt-public-key-file (or --insecure-dev for local development only)")
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 16 {
		bad("--jwt-secret is too short: use at least 16 characters")
	}
	_, jwksErrs := c.jwksSources()
	errs = append(errs, jwksErrs...)
	if c.JWTIssuer != "" && len(c.JWKSURLs) > 0 && len(c.JWTPublicKeyFiles) > 0 {
		bad("--jwt-public-key-file verifies tokens of issuers without a --jwks-url, and --jwt-issuer %q, the only issuer accepted, has one: "+
			"its keys would verify no token; drop it, or give each --jwks-url as ISSUER=URL instead of setting --jwt-issuer", c.JWTIssuer)
	}
	if c.JWKSRefresh < time.Minute || c.JWKSRefresh > 24*time.Hour {
		bad("--jwks-refresh must be between 1m and 24h, got %s", c.JWKSRefresh)
	}
	if strings.TrimSpace(c.JWTSubjectClaim) == "" {
		bad("--jwt-subject-claim must name a claim (default sub)")
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
		{"--idle-poll", c.IdlePoll}, {"--safety-poll", c.SafetyPoll}, {"--election-interval", c.ElectionInterval}, {"--filter-resync", c.FilterResync},
		{"--graphql-init-timeout", c.GraphQLInitTimeout}, {"--open-wait", c.OpenWait},
	}
	for _, p := range positive {
		if p.d <= 0 {
			bad("%s must be positive, got %s", p.name, p.d)
		}
	}
	if c.Heartbeat > 15*time.Second {
		bad("--heartbeat %s: at most 15s, or proxies may close idle streams", c.Heartbeat)
	}
	if c.PollIntervalMax < 0 {
		bad("--poll-interval-max must not be negative (at most --poll-interval: never stretch), got %s", c.PollIntervalMax)
	}
	if c.PollStretchRate < 1 || c.PollStretchRate > maxStretchRate {
		bad("--poll-stretch-rate must be between 1 and %d events per second, got %d", maxStretchRate, c.PollStretchRate)
	}
	if c.QueueSize < 1 || c.QueueSize > 1<<20 {
		bad("--queue-size must be between 1 and %d, got %d", 1<<20, c.QueueSize)
	}
	if c.QueueBytes < minQueueBytes || c.QueueBytes > maxQueueBytes {
		bad("--queue-bytes must be between %s and %s, got %s", byteSize(minQueueBytes), byteSize(maxQueueBytes), byteSize(c.QueueBytes))
	}
	if c.ReplayCacheBytes != 0 && (c.ReplayCacheBytes < minQueueBytes || c.ReplayCacheBytes > maxReplayCacheBytes) {
		bad("--replay-cache-bytes must be 0 (none) or between %s and %s, got %s", byteSize(minQueueBytes), byteSize(maxReplayCacheBytes), byteSize(c.ReplayCacheBytes))
	}
	if c.GraphQLMaxSubscriptions < 1 || c.GraphQLMaxSubscriptions > 10000 {
		bad("--graphql-max-subscriptions must be between 1 and 10000, got %d", c.GraphQLMaxSubscriptions)
	}
	if c.MaxConnections < 0 {
		bad("--max-connections must be 0 (unlimited) or positive, got %d", c.MaxConnections)
	}
	if c.MaxConnectionsPerUser < 0 {
		bad("--max-connections-per-user must be 0 (unlimited) or positive, got %d", c.MaxConnectionsPerUser)
	}
	if c.MaxOpening < 0 {
		bad("--max-opening must be 0 (unlimited) or positive, got %d", c.MaxOpening)
	}
	if c.OpenConcurrency < 0 {
		bad("--open-concurrency must be 0 (from --pool-size) or positive, got %d", c.OpenConcurrency)
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

// jwksSources returns the --jwks-url entries with the issuer each is for,
// and an error for every bad one. Every JWKS is bound to exactly one issuer:
// its keys verify tokens of that issuer only, so no provider's keys can
// vouch for tokens that claim another's.
func (c *Config) jwksSources() ([]auth.JWKS, []error) {
	var (
		sources []auth.JWKS
		errs    []error
	)
	for _, entry := range c.JWKSURLs {
		iss, raw := c.JWTIssuer, entry
		// The issuer is usually a URL itself: split at the first "=" that
		// a URL follows.
		if i := strings.IndexByte(entry, '='); i > 0 && (strings.HasPrefix(entry[i+1:], "https://") || strings.HasPrefix(entry[i+1:], "http://")) {
			iss, raw = entry[:i], entry[i+1:]
			if c.JWTIssuer != "" && iss != c.JWTIssuer {
				errs = append(errs, fmt.Errorf("--jwks-url %q is for issuer %q, but --jwt-issuer accepts only %q: its keys would verify no token", entry, iss, c.JWTIssuer))
				continue
			}
		}
		if iss == "" {
			errs = append(errs, fmt.Errorf("--jwks-url %q: no issuer: give it as ISSUER=URL or set --jwt-issuer, so its keys verify only that issuer's tokens", entry))
			continue
		}
		if err := checkJWKSURL(raw); err != nil {
			errs = append(errs, fmt.Errorf("--jwks-url %q: %w", entry, err))
			continue
		}
		sources = append(sources, auth.JWKS{Issuer: iss, URL: raw})
	}
	return sources, errs
}

// checkJWKSURL accepts https URLs, and http ones to this machine only: keys
// fetched over plain HTTP could be replaced by anyone on the path.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return errors.New("want an absolute URL such as https://idp.example/.well-known/jwks.json")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return errors.New("http is allowed only to localhost: use https")
	}
	return fmt.Errorf("scheme %q: want https", u.Scheme)
}

// authKeys returns where the verifier finds the keys of subscriber tokens.
func (c *Config) authKeys(log *slog.Logger) auth.Keys {
	sources, _ := c.jwksSources() // Validate reported any bad entry
	return auth.Keys{
		Secret: []byte(c.JWTSecret), JWKS: sources, PublicKeyFiles: c.JWTPublicKeyFiles,
		Refresh: cmp.Or(c.jwksRefresh, c.JWKSRefresh), MinRefetch: c.jwksMinRefetch, Log: log,
	}
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

// maxStretchRate bounds --poll-stretch-rate: far beyond what one database
// commits, so any higher value would only mean "never stretch", which
// --poll-interval-max equal to --poll-interval says plainly.
const maxStretchRate = 1_000_000

// Bounds of --queue-bytes: below the minimum, ordinary bursts of small
// events would cut off clients that keep up; above the maximum, one stalled
// client could pin a large share of a relay's memory.
const (
	minQueueBytes = 64 << 10
	maxQueueBytes = 1 << 30
)

// maxReplayCacheBytes bounds --replay-cache-bytes: a window of minutes of a
// busy log fits well below it.
const maxReplayCacheBytes = 16 << 30

// byteSizeValue is a size in bytes, written as a whole number with an
// optional unit: B, KiB, MiB or GiB (K, M, G and KB, MB, GB mean the same
// binary units).
type byteSizeValue int

func (v *byteSizeValue) String() string { return byteSize(int(*v)) }
func (v *byteSizeValue) Set(s string) error {
	s = strings.TrimSpace(s)
	digits := strings.TrimRight(s, "BKMGiIbkmg")
	n, err := strconv.Atoi(strings.TrimSpace(digits))
	unit := map[string]int{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
	mult, ok := unit[strings.ToLower(s[len(digits):])]
	if err != nil || !ok || n < 0 || n > math.MaxInt/mult {
		return fmt.Errorf("want a size such as 8MiB, 512KiB or 1048576")
	}
	*v = byteSizeValue(n * mult)
	return nil
}

// byteSize writes n in the largest binary unit that divides it.
func byteSize(n int) string {
	for _, u := range []struct {
		name string
		size int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.Itoa(n/u.size) + u.name
		}
	}
	return strconv.Itoa(n)
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

// repeatedValue is a list given comma-separated, in the environment or by a
// flag that may repeat: the first flag replaces what the environment said,
// later ones add to it.
type repeatedValue struct {
	list    *[]string
	flagged bool
}

func (v *repeatedValue) String() string {
	if v.list == nil {
		return ""
	}
	return strings.Join(*v.list, ",")
}

func (v *repeatedValue) Set(s string) error {
	if !v.flagged {
		*v.list, v.flagged = nil, true
	}
	for _, part := range strings.Split(s, ",") {
		if p := strings.TrimSpace(part); p != "" {
			*v.list = append(*v.list, p)
		}
	}
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

// listenURL is where the relay's dedicated sessions (the listener and the
// sequencer) connect: they need a real session, not a transaction pooler.
func (c Config) listenURL() string {
	if c.ListenDatabaseURL != "" {
		return c.ListenDatabaseURL
	}
	return c.DatabaseURL
}

// openConcurrency is --open-concurrency, or its default from the pool size.
func (c Config) openConcurrency() int {
	if c.OpenConcurrency > 0 {
		return c.OpenConcurrency
	}
	return max(c.PoolSize-2, 1)
}
