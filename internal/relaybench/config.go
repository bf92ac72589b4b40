package relaybench

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits that keep a run bounded in connections and time.
const (
	MaxSubscribers = 200_000
	MaxDuration    = time.Hour
	MaxRate        = 20_000
	MaxSpawn       = 16
	MaxProcesses   = 64
)

// Config is one run's settings.
type Config struct {
	DatabaseURL string
	URLs        []*url.URL
	JWTSecret   string
	Transport   string
	// Capture is the capture mode to put the database in before the run
	// ("trigger" or "wal"; empty: leave it as it is).
	Capture string

	Subscribers int
	Audience    int
	Rate        float64
	Warmup      time.Duration
	Duration    time.Duration
	Settle      time.Duration
	Drain       time.Duration
	Workers     int

	ConnectConcurrency int
	ConnectTimeout     time.Duration
	PerSourceAddr      int

	RelayPIDs []int
	JSONPath  string
	PlotPath  string
	Label     string
	Keep      bool // keep the bench population (and a spawned database)

	// Processes is how many load-generator processes hold the streams (0:
	// as many as the open-file limit requires).
	Processes int
	// WorkerCommand starts a worker process (default: this executable).
	WorkerCommand []string

	Reconnect       bool
	ReconnectWindow time.Duration
	KillAfter       time.Duration
	KillRelay       int
	// IsolateKilled gives the killed relay's streams a worker process of
	// their own at the lowest CPU priority (see --isolate-killed).
	IsolateKilled bool
	KillSignal    string

	Spawn      int
	RelayBin   string
	MigrateBin string
	RelayFlags []string
}

// DefaultConfig returns the defaults: the latency scenario scaled
// down to a quick run.
func DefaultConfig() Config {
	return Config{
		Transport:          "sse",
		Subscribers:        1000,
		Audience:           100,
		Rate:               200,
		Warmup:             3 * time.Second,
		Duration:           10 * time.Second,
		Settle:             2 * time.Second,
		Drain:              10 * time.Second,
		Workers:            8,
		ConnectConcurrency: 64,
		ConnectTimeout:     30 * time.Second,
		PerSourceAddr:      20_000,
		ReconnectWindow:    5 * time.Second,
		KillSignal:         "KILL",
	}
}

// Usage is the command's synopsis.
const Usage = `usage: relaybench [flags]

Drives running relays (--url, repeatable) or relays it starts itself
(--spawn N) with N subscribers and a producer of templates, and reports
commit→client latency, deliveries/s, relay memory per subscriber and
errors. Only loopback targets are accepted.

One process can hold only as many streams as its open-file limit
(RLIMIT_NOFILE) allows, so relaybench spreads them over several processes
when it must (--processes, default: as many as the limit requires): the
process started runs the producer and its share of the streams, and starts
copies of itself (marked by RELAYBENCH_WORKER in their environment) that
open the rest, with tokens signed by the same secret. Each commit
acknowledgement is sent to them as it happens, so every process measures
commit→client latency alike (on the shared system clock); at the end they
send their counts and histograms back, and the report is one report of
every stream.

--reconnect makes streams behave like a resuming client: a stream that ends
for any reason but the run's end is reopened on another relay after a
random delay within --reconnect-window, with Last-Event-ID set to the last
id it saw, and every template is still tallied exactly. A failed reopen
is retried on another relay after a delay that doubles with each failure
in a row, and never before the Retry-After of a 503 or 429. --kill-after
stops a relay (--kill-relay, --kill-signal) that long into the measured
window: with --reconnect, a reconnect storm; the report then gives the time
until every stream was back and caught up, and the live streams' latency
before, during and after.

flags:
`

// ParseFlags reads args (and getenv for DATABASE_URL and RELAY_JWT_SECRET).
func ParseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	c := DefaultConfig()
	c.DatabaseURL = getenv("DATABASE_URL")
	c.JWTSecret = getenv("RELAY_JWT_SECRET")
	var urls, pids, relayFlags multi
	fs.StringVar(&c.DatabaseURL, "database-url", c.DatabaseURL, "database the relays serve (with --spawn: the server on which a fresh database is created) [$DATABASE_URL]")
	fs.Var(&urls, "url", "relay base URL, e.g. http://127.0.0.1:8080 (repeatable; subscribers are spread over them)")
	fs.StringVar(&c.JWTSecret, "jwt-secret", c.JWTSecret, "the relays' HS256 secret, to sign subscriber tokens [$RELAY_JWT_SECRET]")
	fs.StringVar(&c.Transport, "transport", c.Transport, "sse or ws; pg_eventserv drives a running pg_eventserv at --url instead (bench/eventserv-compare.sh)")
	fs.StringVar(&c.Capture, "capture", "", "trigger or wal: switch the served database to this capture mode (relay.set_capture) and wait until it is in force before connecting (default: leave the mode as it is)")
	fs.IntVar(&c.Subscribers, "subscribers", c.Subscribers, "number of subscribers (each a user and a stream)")
	fs.IntVar(&c.Audience, "audience", c.Audience, "subscribers each template reaches (must divide --subscribers)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "templates inserted per second (0: connect only, to measure idle memory)")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "load before measuring")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "measured load")
	fs.DurationVar(&c.Settle, "settle", c.Settle, "pause after connecting, before the idle memory reading")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "how long to wait for the last deliveries after the producer stops")
	fs.IntVar(&c.Workers, "producers", c.Workers, "database connections inserting concurrently")
	fs.IntVar(&c.ConnectConcurrency, "connect-concurrency", c.ConnectConcurrency, "streams being opened at once")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "time allowed to open one stream")
	fs.IntVar(&c.PerSourceAddr, "per-source-addr", c.PerSourceAddr, "connections per loopback source address (127.0.0.1, .2, …) before using the next")
	fs.Var(&pids, "relay-pid", "process id of a relay, for its memory (repeatable, in --url order)")
	fs.StringVar(&c.JSONPath, "json", "", "write the results as JSON to this file")
	fs.StringVar(&c.PlotPath, "plot", "", "draw the latency distribution as SVG to this file")
	fs.StringVar(&c.Label, "label", "", "a name for this run in the report")
	fs.BoolVar(&c.Keep, "keep", false, "keep the bench users (and a spawned database) afterwards")
	fs.IntVar(&c.Processes, "processes", c.Processes, "load-generator processes holding the streams (0: as many as the open-file limit requires)")
	fs.BoolVar(&c.Reconnect, "reconnect", c.Reconnect, "reopen a stream that ends (its relay went away, slow consumer) on another relay, with Last-Event-ID")
	fs.DurationVar(&c.ReconnectWindow, "reconnect-window", c.ReconnectWindow, "with --reconnect: a stream waits a random delay up to this long before reopening")
	fs.DurationVar(&c.KillAfter, "kill-after", c.KillAfter, "stop relay --kill-relay this long into the measured window (0: never)")
	fs.IntVar(&c.KillRelay, "kill-relay", c.KillRelay, "with --kill-after: index of the relay to stop (in --url/--spawn order, from 0; needs its pid)")
	fs.StringVar(&c.KillSignal, "kill-signal", c.KillSignal, "with --kill-after: KILL or TERM")
	fs.BoolVar(&c.IsolateKilled, "isolate-killed", false, "with --kill-after: hold the streams of --kill-relay in a load-generator process of their own, run at the lowest CPU priority (nice 19), so that their reconnecting takes only CPU the relays, the database and the other streams leave idle: on one machine, an approximation of clients on other machines (their reconnects then wait for idle CPU)")
	fs.IntVar(&c.Spawn, "spawn", 0, "start this many relays on a fresh database migrated by cmd/migrate, instead of --url")
	fs.StringVar(&c.RelayBin, "relay-bin", "", "with --spawn: relay binary (default: go build ./cmd/relay)")
	fs.StringVar(&c.MigrateBin, "migrate-bin", "", "with --spawn: migrate binary (default: go build ./cmd/migrate)")
	fs.Var(&relayFlags, "relay-flag", "with --spawn: extra flag for the relays, e.g. --relay-flag=--queue-size=4096 (repeatable)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("--url %q: want http://host:port", s)
		}
		c.URLs = append(c.URLs, u)
	}
	for _, s := range pids {
		pid, err := strconv.Atoi(s)
		if err != nil || pid <= 0 {
			return c, fmt.Errorf("--relay-pid %q: want a process id", s)
		}
		c.RelayPIDs = append(c.RelayPIDs, pid)
	}
	c.RelayFlags = relayFlags
	return c, c.Validate()
}

// Validate names every bad setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Spawn == 0 && len(c.URLs) == 0 {
		bad("no relay: give --url (repeatable) or --spawn N")
	}
	if c.Spawn != 0 && len(c.URLs) > 0 {
		bad("--spawn and --url exclude each other")
	}
	if c.Spawn < 0 || c.Spawn > MaxSpawn {
		bad("--spawn must be between 0 and %d", MaxSpawn)
	}
	for _, u := range c.URLs {
		if err := CheckLoopback(u); err != nil {
			bad("%v", err)
		}
	}
	if c.JWTSecret == "" {
		bad("no JWT secret: set --jwt-secret or RELAY_JWT_SECRET (with --spawn, the relays are given it)")
	}
	if _, ok := Transports()[c.Transport]; !ok {
		bad("--transport %q: want sse, ws or pg_eventserv", c.Transport)
	}
	if c.Transport == "pg_eventserv" && (c.Spawn > 0 || c.Audience != c.Subscribers) {
		bad("--transport pg_eventserv needs --url of a running pg_eventserv and --audience equal to --subscribers: it sends every event to every stream")
	}
	if c.Capture != "" && c.Capture != "trigger" && c.Capture != "wal" {
		bad("--capture %q: want trigger or wal", c.Capture)
	}
	if c.Capture != "" && c.Transport == "pg_eventserv" {
		bad("--capture is pgrelay's capture mode; pg_eventserv reads its own trigger")
	}
	if c.Subscribers < 1 || c.Subscribers > MaxSubscribers {
		bad("--subscribers must be between 1 and %d", MaxSubscribers)
	}
	if c.Audience < 1 || c.Audience > c.Subscribers || c.Subscribers%max(c.Audience, 1) != 0 {
		bad("--audience %d must divide --subscribers %d", c.Audience, c.Subscribers)
	}
	if c.Rate < 0 || c.Rate > MaxRate {
		bad("--rate must be between 0 and %d", MaxRate)
	}
	if c.Warmup < 0 || c.Duration <= 0 || c.Warmup+c.Duration > MaxDuration {
		bad("--warmup + --duration must be positive and at most %s", MaxDuration)
	}
	if c.Workers < 1 || c.Workers > 256 {
		bad("--producers must be between 1 and 256")
	}
	if c.ConnectConcurrency < 1 || c.ConnectConcurrency > 4096 {
		bad("--connect-concurrency must be between 1 and 4096")
	}
	if c.PerSourceAddr < 1 || c.PerSourceAddr > 28_000 {
		bad("--per-source-addr must be between 1 and 28000 (the ephemeral port range)")
	}
	if c.Processes < 0 || c.Processes > MaxProcesses || c.Processes > c.Subscribers {
		bad("--processes must be between 0 and %d, and at most --subscribers", MaxProcesses)
	}
	if c.Reconnect && (c.ReconnectWindow < 0 || c.ReconnectWindow > time.Minute) {
		bad("--reconnect-window must be between 0 and 1m")
	}
	if c.KillAfter < 0 || (c.KillAfter > 0 && c.KillAfter >= c.Duration) {
		bad("--kill-after must be within the measured window (--duration %s)", c.Duration)
	}
	if c.IsolateKilled && c.KillAfter == 0 {
		bad("--isolate-killed needs --kill-after")
	}
	if c.KillAfter > 0 {
		if n := max(c.Spawn, len(c.URLs)); c.KillRelay < 0 || c.KillRelay >= n {
			bad("--kill-relay %d: want 0 to %d", c.KillRelay, n-1)
		}
		if c.Spawn == 0 && c.KillRelay >= len(c.RelayPIDs) {
			bad("--kill-relay %d needs its --relay-pid", c.KillRelay)
		}
		if c.KillSignal != "KILL" && c.KillSignal != "TERM" {
			bad("--kill-signal %q: want KILL or TERM", c.KillSignal)
		}
	}
	if c.Transport == "pg_eventserv" && c.Reconnect {
		bad("--reconnect needs event ids to resume after, which pg_eventserv does not send")
	}
	if len(c.RelayPIDs) > 0 && c.Spawn > 0 {
		bad("--relay-pid is for --url relays; spawned relays are measured anyway")
	}
	return errors.Join(errs...)
}

// Templates returns how many templates a run inserts.
func (c *Config) Templates() int {
	return int(c.Rate * (c.Warmup + c.Duration).Seconds())
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }
