package relaybench

import (
	"context"
	"encoding/xml"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

func testConfig(t *testing.T, relays ...*relaytest.Relay) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.JWTSecret = relaytest.Secret
	for _, r := range relays {
		u, err := url.Parse(r.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.URLs = append(cfg.URLs, u)
	}
	cfg.Subscribers, cfg.Audience, cfg.Rate = 40, 10, 50
	cfg.Warmup, cfg.Duration, cfg.Settle = 500*time.Millisecond, 1500*time.Millisecond, 100*time.Millisecond
	cfg.PerSourceAddr = 15 // three loopback source addresses
	cfg.RelayPIDs = []int{os.Getpid()}
	dir := t.TempDir()
	cfg.JSONPath, cfg.PlotPath = filepath.Join(dir, "run.json"), filepath.Join(dir, "run.svg")
	return cfg
}

func TestRunDeliversEveryTemplateToExactlyItsAudienceAndReports(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := relaytest.Start(t, db.URL)
	b := relaytest.Start(t, db.URL)
	cfg := testConfig(t, a, b)
	cfg.DatabaseURL = db.URL
	cfg.RelayPIDs = nil // two relays in one process: no per-relay memory
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	l := rep.Load
	if l == nil {
		t.Fatal("no load results")
	}
	templates := int64(cfg.Templates())
	if l.Committed != templates || l.Expected != templates*int64(cfg.Audience) {
		t.Errorf("committed %d of %d templates, expected %d deliveries; want %d and %d",
			l.Committed, templates, l.Expected, templates, templates*int64(cfg.Audience))
	}
	if l.Delivered != l.Expected || l.Missing != 0 || l.Extra != 0 || l.Misordered != 0 || l.Foreign != 0 {
		t.Errorf("deliveries %d of %d (missing %d, extra %d, misordered %d, foreign %d): want exact",
			l.Delivered, l.Expected, l.Missing, l.Extra, l.Misordered, l.Foreign)
	}
	if l.SlowConsumers != 0 || l.StreamsEnded != 0 {
		t.Errorf("%d slow consumers, %d streams ended (%s)", l.SlowConsumers, l.StreamsEnded, l.LastStreamError)
	}
	wantMeasured := uint64(float64(templates)-cfg.Rate*cfg.Warmup.Seconds()) * uint64(cfg.Audience)
	if l.Latency.Count != wantMeasured || l.Latency.P50 <= 0 || l.Latency.P99 < l.Latency.P50 {
		t.Errorf("latency %+v: want %d measured deliveries and p99 ≥ p50 > 0", l.Latency, wantMeasured)
	}
	if rep.Connect.Opened != cfg.Subscribers {
		t.Errorf("opened %d streams, want %d (%v)", rep.Connect.Opened, cfg.Subscribers, rep.Connect.Errors)
	}
	var leftover int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE id LIKE $1", rep.Prefix+"-%").Scan(&leftover); err != nil || leftover != 0 {
		t.Errorf("after the run %d bench users are left (err %v), want 0", leftover, err)
	}
	svg, err := os.ReadFile(cfg.PlotPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(struct{ XMLName xml.Name })); err != nil || !strings.Contains(string(svg), "p99") {
		t.Errorf("plot is not well-formed SVG with p99 marked: %v", err)
	}
	if js, err := os.ReadFile(cfg.JSONPath); err != nil || !strings.Contains(string(js), `"deliveries_per_second"`) {
		t.Errorf("JSON report missing or incomplete: %v", err)
	}
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "p99.9") {
		t.Errorf("table: %v\n%s", err, table.String())
	}
}

func TestRunMeasuresIdleMemoryPerSubscriberWithoutLoad(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := relaytest.Start(t, db.URL)
	cfg := testConfig(t, r)
	cfg.DatabaseURL = db.URL
	cfg.Rate = 0
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.Load != nil {
		t.Errorf("a run at rate 0 reported load results")
	}
	if _, ok := rep.MemoryIdle[os.Getpid()]; !ok || rep.Connect.Opened != cfg.Subscribers {
		t.Errorf("idle memory %v, %d streams open: want this process's memory with %d streams", rep.MemoryIdle, rep.Connect.Opened, cfg.Subscribers)
	}
}

func TestRejectedStreamsAreReported(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := relaytest.Start(t, db.URL)
	cfg := testConfig(t, r)
	cfg.DatabaseURL = db.URL
	cfg.JWTSecret = "a-different-secret-than-the-relays"
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err == nil {
		t.Fatal("Run succeeded with tokens the relay cannot verify")
	}
	if rep == nil || len(rep.Connect.Errors) == 0 || !strings.Contains(rep.Connect.Errors[0], "401") {
		t.Errorf("want the relay's 401 among the open errors, got %+v", rep)
	}
}

func TestConfigRefusesNonLoopbackTargetsAndUnevenAudiences(t *testing.T) {
	cfg := DefaultConfig()
	cfg.JWTSecret = "x"
	u, _ := url.Parse("http://10.1.2.3:8080")
	cfg.URLs = []*url.URL{u}
	cfg.Subscribers, cfg.Audience = 10, 3
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), "must divide") {
		t.Errorf("Validate = %v, want loopback and audience errors", err)
	}
}

func TestConfigRefusesPgEventservRunsThatCannotBeTallied(t *testing.T) {
	// pg_eventserv sends every event to every stream: a smaller audience
	// would count its deliveries as extra, and spawned relays are not it.
	cfg := DefaultConfig()
	cfg.JWTSecret = "x"
	u, _ := url.Parse("http://127.0.0.1:7700")
	cfg.URLs = []*url.URL{u}
	cfg.Transport = "pg_eventserv"
	cfg.Subscribers, cfg.Audience = 100, 10
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--audience equal to --subscribers") {
		t.Errorf("Validate = %v, want the pg_eventserv audience error", err)
	}
	cfg.Audience = 100
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate = %v for a run every stream can be tallied in", err)
	}
}

func TestParseSeqFindsTheProducersNumberInARow(t *testing.T) {
	row := []byte(`{"id": "x", "name": "` + templateName("rbabc", 4711) + `", "created_by": "p"}`)
	if got := parseSeq(row); got != 4711 {
		t.Errorf("parseSeq = %d, want 4711", got)
	}
	for _, s := range []string{`{"name": "Q3 menu"}`, `{"name": "rbseq:"}`} {
		if got := parseSeq([]byte(s)); got != -1 {
			t.Errorf("parseSeq(%s) = %d, want -1", s, got)
		}
	}
}

func TestParseProcStatus(t *testing.T) {
	st, err := parseProcStatus([]byte("Name:\trelay\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n"))
	if err != nil || st.RSS != 1024<<10 || st.HWM != 2048<<10 || st.Threads != 7 {
		t.Errorf("parseProcStatus = %+v, %v", st, err)
	}
	if _, err := parseProcStatus([]byte("Name:\tx\n")); err == nil {
		t.Error("parseProcStatus without VmRSS succeeded")
	}
}

func TestRaiseFileLimitReportsALimitItCannotReach(t *testing.T) {
	got, err := RaiseFileLimit(1 << 40) // beyond any kernel's nr_open
	if err == nil || !strings.Contains(err.Error(), "open-file limit") {
		t.Errorf("RaiseFileLimit(2^40) = %d, %v; want an error naming the open-file limit", got, err)
	}
	if got, err := RaiseFileLimit(64); err != nil || got < 64 {
		t.Errorf("RaiseFileLimit(64) = %d, %v; want at least 64", got, err)
	}
}

func TestARunWithCaptureWalSwitchesTheDatabaseFirstAndDeliversExactly(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := relaytest.Start(t, db.URL)
	cfg := testConfig(t, r)
	cfg.DatabaseURL, cfg.Capture = db.URL, "wal"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var mode string
	if err := db.Pool.QueryRow(context.Background(), "SELECT mode FROM relay.capture").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("capture mode after the run: %q (%v), want wal", mode, err)
	}
	// In wal mode the capture triggers are off: whatever was delivered came
	// through the replication slot.
	l := rep.Load
	templates := int64(cfg.Templates())
	if l == nil || l.Committed != templates || l.Delivered != templates*int64(cfg.Audience) || l.Missing+l.Extra+l.Misordered+l.Foreign != 0 {
		t.Fatalf("load %+v: want %d templates each delivered to its %d subscribers exactly", l, templates, cfg.Audience)
	}
	if rep.Config["capture"] != "wal" {
		t.Errorf("report config capture = %v, want wal", rep.Config["capture"])
	}
}

func TestConfigNamesAnUnknownCaptureMode(t *testing.T) {
	cfg := DefaultConfig()
	cfg.JWTSecret, cfg.Spawn, cfg.Capture = "x", 1, "logical"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `--capture "logical": want trigger or wal`) {
		t.Errorf("Validate = %v, want the capture mode named", err)
	}
}
