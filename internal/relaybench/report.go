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
	Load          *LoadResult        `json:"load,omitempty"`
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
	Committed        int64              `json:"templates_committed"`
	InsertFailures   int64              `json:"insert_failures"`
	LastInsertError  string             `json:"last_insert_error,omitempty"`
	ProducerBehind   int64              `json:"producer_behind"`
	InsertP50        float64            `json:"insert_p50_ms"`
	InsertP99        float64            `json:"insert_p99_ms"`
	Expected         int64              `json:"deliveries_expected"`
	Delivered        int64              `json:"deliveries"`
	Missing          int64              `json:"deliveries_missing"`
	Extra            int64              `json:"deliveries_extra"`
	Misordered       int64              `json:"ids_not_increasing"`
	Foreign          int64              `json:"foreign_events"`
	BeforeAck        int64              `json:"delivered_before_commit_ack"`
	SlowConsumers    int64              `json:"slow_consumer_closes"`
	StreamsEnded     int64              `json:"streams_ended"`
	LastStreamError  string             `json:"last_stream_error,omitempty"`
	DeliveriesPerSec float64            `json:"deliveries_per_second"`
	Latency          LatencyResult      `json:"latency"`
	FromSend         LatencyResult      `json:"latency_from_insert_sent"`
	MemoryPeak       map[int]ProcStatus `json:"relay_memory_peak"`
}

func reportConfig(c Config) map[string]any {
	urls := make([]string, len(c.URLs))
	for i, u := range c.URLs {
		urls[i] = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	}
	return map[string]any{
		"transport": c.Transport, "subscribers": c.Subscribers, "audience": c.Audience, "rate": c.Rate,
		"warmup": c.Warmup.String(), "duration": c.Duration.String(), "producers": c.Workers,
		"spawn": c.Spawn, "urls": urls, "relay_flags": c.RelayFlags, "label": c.Label,
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
	row("run", "%s %v subscribers via %v, audience %v, %v inserts/s, %v measured", r.Prefix, r.Config["subscribers"], r.Config["transport"], r.Config["audience"], r.Config["rate"], r.Config["duration"])
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
		row("deliveries", "%d of %d expected (%d missing, %d extra)", l.Delivered, l.Expected, l.Missing, l.Extra)
		row("deliveries/s", "%.0f", l.DeliveriesPerSec)
		lt := l.Latency
		row("commit→client latency", "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms  (n=%d)", lt.P50, lt.P90, lt.P99, lt.P999, lt.Max, lt.Count)
		fs := l.FromSend
		row("  from insert sent", "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms  (upper bound: includes the insert and its commit)", fs.P50, fs.P90, fs.P99, fs.P999, fs.Max)
		row("errors", "%d slow-consumer closes, %d streams ended, %d ids out of order, %d foreign events, %d seen before commit ack",
			l.SlowConsumers, l.StreamsEnded, l.Misordered, l.Foreign, l.BeforeAck)
		if l.LastInsertError != "" {
			row("  last insert error", "%s", l.LastInsertError)
		}
		if l.LastStreamError != "" {
			row("  last stream error", "%s", l.LastStreamError)
		}
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
