package relaybench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// Report is everything a run measured. Durations are in milliseconds.
type Report struct {
	Label         string             `json:"label,omitempty"`
	Prefix        string             `json:"run_prefix"`
	Config        map[string]any     `json:"config"`
	Machine       Machine            `json:"machine"`
	Relays        []Relay            `json:"relays"`
	Connect       ConnectResult      `json:"connect"`
	MemoryBefore  map[int]ProcStatus `json:"relay_memory_before"`
	MemoryIdle    map[int]ProcStatus `json:"relay_memory_idle"`
	PerSubscriber float64            `json:"relay_rss_bytes_per_subscriber"`
	Processes     []ProcessInfo      `json:"load_generator_processes,omitempty"`
	Load          *LoadResult        `json:"load,omitempty"`
	DB            *DBLoad            `json:"database,omitempty"`
	Storm         *StormResult       `json:"storm,omitempty"`
	CDF           []CDFPoint         `json:"latency_cdf,omitempty"`
}

// ConnectResult describes opening the streams.
type ConnectResult struct {
	Opened  int      `json:"opened"`
	Seconds float64  `json:"seconds"`
	P50     float64  `json:"open_p50_ms"`
	P99     float64  `json:"open_p99_ms"`
	Errors  []string `json:"errors,omitempty"`
}

// LatencyResult is the commit→client latency distribution.
type LatencyResult struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// LoadResult is what the producer and the clients saw under load.
type LoadResult struct {
	Committed       int64   `json:"templates_committed"`
	InsertFailures  int64   `json:"insert_failures"`
	LastInsertError string  `json:"last_insert_error,omitempty"`
	ProducerBehind  int64   `json:"producer_behind"`
	InsertP50       float64 `json:"insert_p50_ms"`
	InsertP99       float64 `json:"insert_p99_ms"`
	Expected        int64   `json:"deliveries_expected"`
	Delivered       int64   `json:"deliveries"`
	Missing         int64   `json:"deliveries_missing"`
	// MissingOpen counts only the streams that opened: deliveries lost,
	// where Missing also counts those of streams that failed to open.
	MissingOpen      int64              `json:"deliveries_missing_on_open_streams"`
	Extra            int64              `json:"deliveries_extra"`
	Misordered       int64              `json:"ids_not_increasing"`
	Foreign          int64              `json:"foreign_events"`
	BeforeAck        int64              `json:"delivered_before_commit_ack"`
	SlowConsumers    int64              `json:"slow_consumer_closes"`
	StreamsEnded     int64              `json:"streams_ended"`
	Reopened         int64              `json:"streams_reopened"`
	LastStreamError  string             `json:"last_stream_error,omitempty"`
	DeliveriesPerSec float64            `json:"deliveries_per_second"`
	Latency          LatencyResult      `json:"latency"`
	FromSend         LatencyResult      `json:"latency_from_insert_sent"`
	MemoryPeak       map[int]ProcStatus `json:"relay_memory_peak"`
}

// DBLoad is the database's load during a run: averaged over the measured
// window, and per second.
type DBLoad struct {
	Measured DBSummary  `json:"measured"`
	Timeline []DBSecond `json:"per_second"`
}

// StormResult is what followed the stop of one relay (--kill-after).
type StormResult struct {
	Relay          string  `json:"relay"`
	Signal         string  `json:"signal"`
	StreamsOnRelay int     `json:"streams_on_relay"`
	KilledAtS      float64 `json:"killed_at_s"`
	Reopened       int64   `json:"streams_reopened"`
	ReopenErrors   int64   `json:"reopen_attempts_failed"`
	WithoutID      int64   `json:"reopened_without_an_id"`
	GaveUp         int64   `json:"streams_not_reopened"`
	// AllReopenedMS is the time from the signal to the last stream back;
	// CaughtUpMS to the last event committed before a stream reopened
	// reaching it (its replay done), or to the last reopen if later.
	AllReopenedMS float64       `json:"all_reopened_ms"`
	CaughtUpMS    float64       `json:"caught_up_ms"`
	LiveBefore    LatencyResult `json:"live_latency_before"`
	LiveDuring    LatencyResult `json:"live_latency_during"`
	LiveAfter     LatencyResult `json:"live_latency_after"`
	P99Ratio      float64       `json:"live_p99_during_over_before"`
	Resumed       LatencyResult `json:"resumed_streams_latency"`
	DBBefore      DBSummary     `json:"database_before"`
	DBDuring      DBSummary     `json:"database_during"`
}

func reportConfig(c Config) map[string]any {
	urls := make([]string, len(c.URLs))
	for i, u := range c.URLs {
		urls[i] = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	}
	return map[string]any{
		"transport": c.Transport, "capture": c.Capture, "subscribers": c.Subscribers, "audience": c.Audience, "rate": c.Rate,
		"warmup": c.Warmup.String(), "duration": c.Duration.String(), "producers": c.Workers,
		"spawn": c.Spawn, "urls": urls, "processes": c.Processes, "reconnect": c.Reconnect,
		"reconnect_window": c.ReconnectWindow.String(), "kill_after": c.KillAfter.String(), "kill_relay": c.KillRelay, "kill_signal": c.KillSignal, "relay_flags": c.RelayFlags, "label": c.Label,
		"latency_from": "producer's commit acknowledgement (template name carries its sequence number) to the client's parse of the event",
	}
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable prints the report as a table.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...))
	}
	m := r.Machine
	row("machine", "%d CPUs (%s), %.1f GiB, kernel %s, %s", m.CPUs, m.CPUModel, float64(m.MemoryBytes)/(1<<30), m.Kernel, m.GoVersion)
	row("postgresql", "%s", firstWords(m.PostgreSQL, 2))
	row("load average", "before %s, after %s", m.LoadBefore, m.LoadAfter)
	via := fmt.Sprint(r.Config["transport"])
	if c, _ := r.Config["capture"].(string); c != "" {
		via += ", capture " + c
	}
	row("run", "%s %v subscribers via %s, audience %v, %v inserts/s, %v measured", r.Prefix, r.Config["subscribers"], via, r.Config["audience"], r.Config["rate"], r.Config["duration"])
	row("relays", "%d", len(r.Relays))
	row("streams opened", "%d in %.1fs (open p50 %.1f ms, p99 %.1f ms)", r.Connect.Opened, r.Connect.Seconds, r.Connect.P50, r.Connect.P99)
	for _, e := range r.Connect.Errors {
		row("  open error", "%s", e)
	}
	for _, pid := range sortedPIDs(r.MemoryIdle) {
		row(fmt.Sprintf("relay %d RSS", pid), "%.1f MiB before, %.1f MiB idle with streams, %s peak under load",
			mib(r.MemoryBefore[pid].RSS), mib(r.MemoryIdle[pid].RSS), peakOf(r, pid))
	}
	if r.PerSubscriber > 0 {
		row("RSS per idle subscriber", "%.1f KiB", r.PerSubscriber/1024)
	} else {
		row("RSS per idle subscriber", "not measured (give --relay-pid for every relay, or --spawn)")
	}
	if l := r.Load; l != nil {
		row("templates committed", "%d (insert p50 %.2f ms, p99 %.2f ms; %d failed; %d started late)", l.Committed, l.InsertP50, l.InsertP99, l.InsertFailures, l.ProducerBehind)
		row("deliveries", "%d of %d expected (%d missing, %d of them on streams that opened; %d extra)", l.Delivered, l.Expected, l.Missing, l.MissingOpen, l.Extra)
		row("deliveries/s", "%.0f", l.DeliveriesPerSec)
		lt := l.Latency
		row("commit→client latency", "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms  (n=%d)", lt.P50, lt.P90, lt.P99, lt.P999, lt.Max, lt.Count)
		fs := l.FromSend
		row("  from insert sent", "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms  (upper bound: includes the insert and its commit)", fs.P50, fs.P90, fs.P99, fs.P999, fs.Max)
		row("errors", "%d slow-consumer closes, %d streams ended, %d ids out of order, %d foreign events, %d seen before commit ack",
			l.SlowConsumers, l.StreamsEnded, l.Misordered, l.Foreign, l.BeforeAck)
		if l.Reopened > 0 {
			row("streams reopened", "%d", l.Reopened)
		}
		if l.LastInsertError != "" {
			row("  last insert error", "%s", l.LastInsertError)
		}
		if l.LastStreamError != "" {
			row("  last stream error", "%s", l.LastStreamError)
		}
	}
	if len(r.Processes) > 1 {
		for _, p := range r.Processes {
			row(fmt.Sprintf("load generator %d", p.PID), "%d streams, %.1f MiB RSS, %.1f s CPU", p.Streams, mib(p.RSS), p.CPUSeconds)
		}
	}
	if d := r.DB; d != nil {
		m := d.Measured
		row("database (measured)", "%.0f tx/s, %d relay connections, CPU of backends: relays' %.1f%%, producer's %.1f%%, others %.1f%%; relay processes %.1f%%",
			m.TxPerSec, m.RelayConns, m.RelayBackends, m.ProducerBack, m.OtherBackends, m.Relays)
	}
	if s := r.Storm; s != nil {
		row("storm", "SIG%s to %s (%d streams) at %.1fs: %d reopened (%d attempts failed, %d without an id, %d not reopened)",
			s.Signal, s.Relay, s.StreamsOnRelay, s.KilledAtS, s.Reopened, s.ReopenErrors, s.WithoutID, s.GaveUp)
		row("  back and caught up", "all reopened after %.0f ms, caught up after %.0f ms", s.AllReopenedMS, s.CaughtUpMS)
		row("  live p99", "before %.2f ms, during %.2f ms (%.1f×), after %.2f ms", s.LiveBefore.P99, s.LiveDuring.P99, s.P99Ratio, s.LiveAfter.P99)
		row("  resumed streams", "p50 %.0f ms  p99 %.0f ms  max %.0f ms", s.Resumed.P50, s.Resumed.P99, s.Resumed.Max)
		row("  database", "before %.0f tx/s, relay backends %.1f%% CPU; during %.0f tx/s, %.1f%%",
			s.DBBefore.TxPerSec, s.DBBefore.RelayBackends, s.DBDuring.TxPerSec, s.DBDuring.RelayBackends)
		// On one machine the load generators' own reconnecting takes CPU
		// from what they measure: show it beside the relays'.
		row("  CPU of processes", "before: relays %.1f%%, load generators %.1f%%; during: relays %.1f%%, load generators %.1f%% (of one core)",
			s.DBBefore.Relays, s.DBBefore.Bench, s.DBDuring.Relays, s.DBDuring.Bench)
	}
	return tw.Flush()
}

func peakOf(r *Report, pid int) string {
	if r.Load == nil {
		return "no"
	}
	if st, ok := r.Load.MemoryPeak[pid]; ok {
		return fmt.Sprintf("%.1f MiB", mib(st.RSS))
	}
	return "unknown"
}

func sortedPIDs(m map[int]ProcStatus) []int {
	out := make([]int, 0, len(m))
	for pid := range m {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	return strings.Join(f[:min(n, len(f))], " ")
}

// thinCDF keeps the points where the fraction passes a step of 0.5% (0.05%
// above 99%), and the last: a few hundred points draw the curve and keep
// the report small, where a long tail has a point per bucket.
func thinCDF(cdf []CDFPoint) []CDFPoint {
	var out []CDFPoint
	next := 0.0
	for i, p := range cdf {
		if p.Fraction >= next || i == len(cdf)-1 {
			out = append(out, p)
			step := 0.005
			if p.Fraction >= 0.99 {
				step = 0.0005
			}
			next = p.Fraction + step
		}
	}
	return out
}
