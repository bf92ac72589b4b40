package relaybench

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// clockTicks is the kernel's USER_HZ, the unit of CPU times in
// /proc/<pid>/stat (100 on every Linux architecture Go runs on).
const clockTicks = 100

// DBSecond is the database's and the processes' load over one sampling
// interval of a run. CPU is in percent of one core; AtS is the end of the
// interval in seconds since the measured window began (negative: warm-up).
type DBSecond struct {
	AtS            float64 `json:"at_s"`
	TxPerSec       float64 `json:"tx_per_s"`
	RelayConns     int     `json:"relay_connections"`
	OtherConns     int     `json:"other_connections"`
	RelayBackends  float64 `json:"relay_backends_cpu_pct"`
	ProducerBack   float64 `json:"producer_backends_cpu_pct"`
	OtherBackends  float64 `json:"other_backends_cpu_pct"`
	Relays         float64 `json:"relay_processes_cpu_pct"`
	Bench          float64 `json:"relaybench_processes_cpu_pct"`
	Undisturbed    uint64  `json:"undisturbed_deliveries"`
	UndisturbedP99 float64 `json:"undisturbed_p99_ms"`
}

// DBSummary averages DBSeconds over a stretch of a run.
type DBSummary struct {
	Seconds       float64 `json:"seconds"`
	TxPerSec      float64 `json:"tx_per_s"`
	RelayConns    int     `json:"relay_connections_max"`
	RelayBackends float64 `json:"relay_backends_cpu_pct"`
	ProducerBack  float64 `json:"producer_backends_cpu_pct"`
	OtherBackends float64 `json:"other_backends_cpu_pct"`
	Relays        float64 `json:"relay_processes_cpu_pct"`
	Bench         float64 `json:"relaybench_processes_cpu_pct"`
}

// dbSample is one reading: the database's commit counter, its backends by
// kind with their CPU ticks, and the CPU ticks of the relays and of the
// load generator's processes.
type dbSample struct {
	at      int64
	xact    int64
	backend map[int]backendTicks
	relays  map[int]int64
	bench   map[int]int64
}

type backendTicks struct {
	kind  string
	ticks int64
}

// dbSampler reads the load once a second, and on demand at the measured
// window's edges. Its own session is named relaybench-monitor, so that it
// is counted apart from the producer's.
type dbSampler struct {
	pool      *pgxpool.Pool
	clock     *Sent
	relayPIDs []int
	benchPIDs func() []int
	mu        sync.Mutex // guards samples
	samples   []dbSample
}

const backendsSQL = `
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
       coalesce(array_agg(pid), '{}'),
       coalesce(array_agg(CASE WHEN application_name LIKE 'pgrelay%' THEN 'relay'
                               WHEN application_name = 'relaybench' THEN 'producer'
                               ELSE 'other' END), '{}')
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`

// run samples every interval until ctx is done.
func (s *dbSampler) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// mark takes a sample now and returns its index, -1 if it failed.
func (s *dbSampler) mark(ctx context.Context) int {
	if !s.sample(ctx) {
		return -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.samples) - 1
}

func (s *dbSampler) sample(ctx context.Context) bool {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var sm dbSample
	var pids []int32
	var kinds []string
	if err := s.pool.QueryRow(qctx, backendsSQL).Scan(&sm.xact, &pids, &kinds); err != nil {
		return false
	}
	sm.at = s.clock.Now()
	sm.backend = make(map[int]backendTicks, len(pids))
	for i, pid := range pids {
		sm.backend[int(pid)] = backendTicks{kind: kinds[i], ticks: cpuTicks(int(pid))}
	}
	sm.relays = map[int]int64{}
	for _, pid := range s.relayPIDs {
		sm.relays[pid] = cpuTicks(pid)
	}
	sm.bench = map[int]int64{}
	for _, pid := range s.benchPIDs() {
		sm.bench[pid] = cpuTicks(pid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, sm)
	return true
}

// cpuTicks reads a process's user and system CPU time (-1: unknown).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// The command name is in parentheses and may hold spaces: count the
	// fields after its closing one (utime and stime are fields 14 and 15).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return u + st
}

// seconds turns the samples into per-interval load; a process present in
// only one of two samples is left out of that interval (not counted as
// negative time). On a loaded machine the sampler's ticks bunch up: a
// sample less than minInterval after the last one used is skipped, so
// that no rate is taken over a sliver of time.
func (s *dbSampler) seconds(measureStart int64, undisturbed *Timeline) []DBSecond {
	const minInterval = 900 * time.Millisecond
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []DBSecond
	for i, j := 0, 1; j < len(s.samples); j++ {
		a, b := s.samples[i], s.samples[j]
		if time.Duration(b.at-a.at) < minInterval {
			continue
		}
		i = j
		row := interval(a, b, measureStart)
		if undisturbed != nil {
			h := undisturbed.Window(a.at, b.at)
			row.Undisturbed, row.UndisturbedP99 = h.Count(), ms(h.Quantile(0.99))
		}
		out = append(out, row)
	}
	return out
}

// between is the load from sample i to sample j taken as one interval,
// whatever their distance; ok is false if either is missing.
func (s *dbSampler) between(i, j int) (DBSummary, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || j <= i || j >= len(s.samples) {
		return DBSummary{}, false
	}
	a, b := s.samples[i], s.samples[j]
	r := interval(a, b, a.at)
	return DBSummary{Seconds: float64(b.at-a.at) / float64(time.Second), TxPerSec: r.TxPerSec, RelayConns: r.RelayConns,
		RelayBackends: r.RelayBackends, ProducerBack: r.ProducerBack, OtherBackends: r.OtherBackends,
		Relays: r.Relays, Bench: r.Bench}, true
}

// interval is the load from sample a to sample b, timed from measureStart.
func interval(a, b dbSample, measureStart int64) DBSecond {
	dt := float64(b.at-a.at) / float64(time.Second)
	pct := func(ticks int64) float64 { return float64(ticks) / clockTicks / dt * 100 }
	row := DBSecond{AtS: float64(b.at-measureStart) / float64(time.Second), TxPerSec: float64(b.xact-a.xact) / dt}
	cpu := map[string]int64{}
	for pid, bt := range b.backend {
		if bt.kind == "relay" {
			row.RelayConns++
		} else {
			row.OtherConns++
		}
		if at, ok := a.backend[pid]; ok && at.ticks >= 0 && bt.ticks >= at.ticks {
			cpu[bt.kind] += bt.ticks - at.ticks
		}
	}
	row.RelayBackends, row.ProducerBack, row.OtherBackends = pct(cpu["relay"]), pct(cpu["producer"]), pct(cpu["other"])
	row.Relays, row.Bench = pct(tickDelta(a.relays, b.relays)), pct(tickDelta(a.bench, b.bench))
	return row
}

func tickDelta(a, b map[int]int64) int64 {
	var sum int64
	for pid, t := range b {
		if t0, ok := a[pid]; ok && t0 >= 0 && t >= t0 {
			sum += t - t0
		}
	}
	return sum
}

// summarize averages the intervals that end in (from, to] (seconds since
// the measured window began).
func summarize(rows []DBSecond, from, to float64) DBSummary {
	var s DBSummary
	n := 0
	for _, r := range rows {
		if r.AtS <= from || r.AtS > to {
			continue
		}
		n++
		s.TxPerSec += r.TxPerSec
		s.RelayConns = max(s.RelayConns, r.RelayConns)
		s.RelayBackends += r.RelayBackends
		s.ProducerBack += r.ProducerBack
		s.OtherBackends += r.OtherBackends
		s.Relays += r.Relays
		s.Bench += r.Bench
	}
	if n == 0 {
		return s
	}
	f := float64(n)
	s.Seconds = f
	s.TxPerSec /= f
	s.RelayBackends /= f
	s.ProducerBack /= f
	s.OtherBackends /= f
	s.Relays /= f
	s.Bench /= f
	return s
}
