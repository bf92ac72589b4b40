// Package relaybench drives relays with subscribers and a producer and
// measures what clients see: commit→client latency, deliveries per second,
// relay memory per subscriber, losses and errors. cmd/relaybench is its
// command line.
package relaybench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
	"github.com/pgrelay/pgrelay/relay/auth"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Relay is one relay under test.
type Relay struct {
	URL string `json:"url"`
	PID int    `json:"pid,omitempty"`
}

// Run performs one benchmark run and returns its report. Progress lines go
// to progress.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(progress, "relaybench: "+format+"\n", args...) }
	// With --isolate-killed the killed relay's streams are a worker's of
	// their own, and the others are split as usual.
	var rest, isolated *relaySelect
	nRelays := max(cfg.Spawn, len(cfg.URLs))
	if cfg.IsolateKilled {
		rest, isolated = &relaySelect{Relay: cfg.KillRelay}, &relaySelect{Relay: cfg.KillRelay, Only: true}
	}
	procs, err := planProcesses(cfg, rest.count(0, cfg.Subscribers, nRelays))
	if err != nil {
		return nil, err
	}
	slices := splitSubscribers(cfg.Subscribers, procs)
	if _, err := RaiseFileLimit(uint64(rest.count(slices[0][0], slices[0][1], nRelays)) + fileReserve); err != nil {
		return nil, err
	}
	rep := &Report{Config: reportConfig(cfg), Machine: DescribeMachine(ctx, runtime.Version())}
	relays := make([]Relay, len(cfg.URLs))
	for i, u := range cfg.URLs {
		relays[i].URL = u.String()
		if i < len(cfg.RelayPIDs) {
			relays[i].PID = cfg.RelayPIDs[i]
		}
	}
	dbURL := cfg.DatabaseURL
	if cfg.Spawn > 0 {
		sp, err := StartSpawned(ctx, cfg, logf)
		if err != nil {
			return nil, err
		}
		defer sp.Stop(logf)
		relays, dbURL = sp.Relays, sp.DatabaseURL
		rep.Machine.Notes = append(rep.Machine.Notes, "relays spawned on a fresh database "+sp.DBName)
	}
	rep.Relays = relays

	pool, err := openPool(ctx, dbURL, int32(cfg.Workers+2), "relaybench")
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if err := pool.QueryRow(ctx, "SELECT version()").Scan(&rep.Machine.PostgreSQL); err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	if cfg.Capture != "" {
		if err := SetCapture(ctx, pool, cfg.Capture, logf); err != nil {
			return nil, err
		}
	}
	monitor, err := openPool(ctx, dbURL, 1, "relaybench-monitor")
	if err != nil {
		return nil, err
	}
	defer monitor.Close()

	pop, err := NewPopulation(cfg.Subscribers, cfg.Audience)
	if err != nil {
		return nil, err
	}
	rep.Prefix = pop.Prefix
	logf("creating %d subscribers (%d per location) as %s-*", cfg.Subscribers, cfg.Audience, pop.Prefix)
	if err := pop.Create(ctx, pool); err != nil {
		return nil, err
	}
	if !cfg.Keep {
		defer func() {
			if err := pop.Remove(context.WithoutCancel(ctx), pool); err != nil {
				logf("clean up: %v", err)
			}
		}()
	}

	rep.MemoryBefore = readMemory(relays)
	templates := cfg.Templates()
	sent := NewSent(templates)
	clients := NewClients(Transports()[cfg.Transport], sent, templates)
	clients.MeasureFrom = int(cfg.Rate * cfg.Warmup.Seconds())
	clients.MeasureTo = templates
	clients.SetLocations(pop.Locations())
	if err := setReconnect(clients, cfg, relays); err != nil {
		return nil, err
	}
	defer clients.Close()
	ttl := cfg.Warmup + cfg.Duration + cfg.Drain + time.Hour
	f := &fleet{local: clients}
	if procs > 1 || isolated != nil {
		urls := make([]string, len(relays))
		for i, r := range relays {
			urls[i] = r.URL
		}
		spec := workerSpec{Transport: cfg.Transport, Relays: urls, JWTSecret: cfg.JWTSecret, Prefix: pop.Prefix,
			Subscribers: cfg.Subscribers, Audience: cfg.Audience, Templates: templates, MeasureFrom: clients.MeasureFrom,
			ClockStart: sent.StartUnixNano(), ConnectConcurrency: cfg.ConnectConcurrency, ConnectTimeout: cfg.ConnectTimeout,
			PerSourceAddr: cfg.PerSourceAddr, TokenTTL: ttl, Reconnect: cfg.Reconnect, ReconnectWindow: cfg.ReconnectWindow}
		cmd, err := workerCommand(cfg)
		if err != nil {
			return nil, err
		}
		spec.Select = rest
		ws, err := startWorkers(ctx, cmd, spec, slices[1:], progress)
		if ws != nil {
			defer ws.Stop()
		}
		if err != nil {
			return nil, err
		}
		if isolated != nil {
			spec.Select = isolated
			iso, err := startWorkers(ctx, cmd, spec, [][2]int{{0, cfg.Subscribers}}, progress)
			if iso != nil {
				ws.procs = append(ws.procs, iso.procs...) // stopped with the others
			}
			if err != nil {
				return nil, err
			}
			for _, p := range iso.procs {
				if err := syscall.Setpriority(syscall.PRIO_PROCESS, p.cmd.Process.Pid, 19); err != nil {
					return nil, fmt.Errorf("lower the priority of worker %d (--isolate-killed): %w", p.cmd.Process.Pid, err)
				}
				logf("worker %d holds the streams of relay %d, at nice 19", p.cmd.Process.Pid, cfg.KillRelay)
			}
		}
		f.workers = ws
	}

	targets, err := targetsFor(cfg, relays, pop, slices[0][0], slices[0][1], ttl, rest)
	if err != nil {
		return nil, err
	}
	holders := procs
	if isolated != nil {
		holders++
	}
	logf("opening %d %s streams on %d relay(s) from %d process(es)", cfg.Subscribers, cfg.Transport, len(relays), holders)
	connectStart := time.Now()
	opened, errs := clients.Connect(ctx, targets, cfg.ConnectConcurrency, cfg.ConnectTimeout)
	rep.Connect = ConnectResult{Opened: opened}
	for _, e := range errs {
		rep.Connect.Errors = append(rep.Connect.Errors, e.Error())
	}
	localOpened := opened
	if f.workers != nil {
		n, werrs, err := f.workers.WaitOpened(ctx)
		rep.Connect.Opened += n
		rep.Connect.Errors = append(rep.Connect.Errors, werrs...)
		if err != nil {
			return rep, err
		}
	}
	rep.Connect.Seconds = time.Since(connectStart).Seconds()
	logf("%d streams open in %.1fs", rep.Connect.Opened, rep.Connect.Seconds)
	if rep.Connect.Opened == 0 {
		return rep, fmt.Errorf("no stream could be opened: %w", errors.Join(errs...))
	}
	if err := ctxtime.Sleep(ctx, cfg.Settle); err != nil {
		return rep, err
	}
	rep.MemoryIdle = readMemory(relays)
	rep.PerSubscriber = perSubscriber(rep.MemoryBefore, rep.MemoryIdle, relays, rep.Connect.Opened)

	var lr *loadRun
	if templates > 0 {
		sampler := &dbSampler{pool: monitor, clock: sent, relayPIDs: relayPIDs(relays), benchPIDs: f.pids}
		sctx, stopSampler := context.WithCancel(ctx)
		sampled := make(chan struct{})
		go func() { defer close(sampled); sampler.run(sctx, time.Second) }()
		lr, err = produce(ctx, cfg, pool, pop, sent, f, relays, sampler, logf)
		stopSampler()
		<-sampled
		if err != nil {
			return rep, err
		}
		lr.db = sampler.seconds(lr.measureStart, clients.Undisturbed)
		// The window's own load is read between the samples taken at its
		// edges, so that a short window still has it however the
		// once-a-second ticks fell.
		var ok bool
		if lr.dbMeasured, ok = sampler.between(lr.markStart, lr.markEnd); !ok {
			lr.dbMeasured = summarize(lr.db, 0, lr.window.Seconds())
		}
	}
	// Every process's streams end here, and the workers' counts join the
	// parent's before anything is tallied.
	clients.Close()
	local := selfInfo(localOpened)
	rep.Processes = append(rep.Processes, *local)
	if f.workers != nil {
		results, err := f.workers.Finish(ctx)
		for _, r := range results {
			if err := clients.Merge(r); err != nil {
				return rep, err
			}
			if r.Process != nil {
				rep.Processes = append(rep.Processes, *r.Process)
			}
		}
		if err != nil {
			return rep, err
		}
	}
	rep.Connect.P50, rep.Connect.P99 = ms(clients.ConnectTime.Quantile(0.5)), ms(clients.ConnectTime.Quantile(0.99))
	if lr != nil {
		fillLoad(rep, cfg, clients, lr)
	}
	rep.Machine.LoadAfter = LoadAvg()
	if cfg.PlotPath != "" {
		if err := WritePlot(cfg.PlotPath, rep, clients.Latency); err != nil {
			return rep, err
		}
	}
	if cfg.JSONPath != "" {
		rep.CDF = thinCDF(clients.Latency.CDF())
		if err := rep.WriteJSON(cfg.JSONPath); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func openPool(ctx context.Context, dbURL string, conns int32, app string) (*pgxpool.Pool, error) {
	poolCfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	poolCfg.MaxConns = conns
	poolCfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return pool, nil
}

// fleet is every process's streams, as the parent sees them while the run
// goes on: its own, and the workers' as they last reported.
type fleet struct {
	local   *Clients
	workers *workers
}

func (f *fleet) Delivered() int64 {
	n := f.local.Delivered()
	if f.workers != nil {
		n += f.workers.Delivered()
	}
	return n
}

func (f *fleet) Open() int {
	n := f.local.Open()
	if f.workers != nil {
		n += f.workers.Open()
	}
	return n
}

func (f *fleet) Ack(seq int, sent, acked int64) {
	if f.workers != nil {
		f.workers.Ack(seq, sent, acked)
	}
}

func (f *fleet) pids() []int {
	out := []int{os.Getpid()}
	if f.workers != nil {
		out = append(out, f.workers.PIDs()...)
	}
	return out
}

// fileReserve is the descriptors a process keeps for everything but its
// streams (database connections, pipes, the relays' logs).
const fileReserve = 2048

// planProcesses decides how many processes hold the streams: --processes,
// or as few as the open-file limit allows.
func planProcesses(cfg Config, streams int) (int, error) {
	if cfg.Processes > 0 {
		return cfg.Processes, nil
	}
	const reserve = fileReserve
	limit, err := RaiseFileLimit(uint64(streams) + reserve)
	if err == nil {
		return 1, nil
	}
	if limit <= 2*reserve {
		return 0, err
	}
	per := int(limit) - reserve
	n := (streams + per - 1) / per
	if n > MaxProcesses {
		return 0, fmt.Errorf("%d streams need %d processes of %d streams (open-file limit %d), more than %d", streams, n, per, limit, MaxProcesses)
	}
	return n, nil
}

// splitSubscribers cuts [0, n) into k contiguous slices of nearly equal size.
func splitSubscribers(n, k int) [][2]int {
	out := make([][2]int, k)
	for i := range out {
		out[i] = [2]int{i * n / k, (i + 1) * n / k}
	}
	return out
}

func workerCommand(cfg Config) ([]string, error) {
	if len(cfg.WorkerCommand) > 0 {
		return cfg.WorkerCommand, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable to start worker processes: %w", err)
	}
	return []string{exe}, nil
}

func setReconnect(c *Clients, cfg Config, relays []Relay) error {
	if !cfg.Reconnect {
		return nil
	}
	rc := &Reconnect{Window: cfg.ReconnectWindow, Retry: time.Second}
	for _, r := range relays {
		u, err := parseURL(r.URL)
		if err != nil {
			return err
		}
		rc.Relays = append(rc.Relays, u)
	}
	c.Reconnect = rc
	return nil
}

func relayPIDs(relays []Relay) []int {
	var out []int
	for _, r := range relays {
		if r.PID > 0 {
			out = append(out, r.PID)
		}
	}
	return out
}

// loadRun is what produce saw, for the report once every process's counts
// are in.
type loadRun struct {
	prod                 *Producer
	startCount, endCount int64
	window               time.Duration
	measureStart         int64
	measureEnd           int64
	killAt               int64 // run clock of the kill, 0: none
	peak                 map[int]ProcStatus
	db                   []DBSecond
	markStart, markEnd   int // the samples at the window's edges (-1: failed)
	dbMeasured           DBSummary
}

// produce runs the producer for warm-up and measurement (stopping a relay
// on the way, with --kill-after) and waits for the last deliveries.
func produce(ctx context.Context, cfg Config, pool *pgxpool.Pool, pop Population, sent *Sent, f *fleet,
	relays []Relay, sampler *dbSampler, logf func(string, ...any)) (*loadRun, error) {
	templates := cfg.Templates()
	prod := &Producer{Pool: pool, Population: pop, Rate: cfg.Rate, Workers: cfg.Workers, Sent: sent, InsertTime: &Histogram{}, OnAck: f.Ack}
	lr := &loadRun{prod: prod, peak: map[int]ProcStatus{}}
	logf("inserting %d templates at %.0f/s (%s warm-up, %s measured), each to %d subscribers",
		templates, cfg.Rate, cfg.Warmup, cfg.Duration, cfg.Audience)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prodDone := make(chan struct{})
	go func() { defer close(prodDone); prod.Run(pctx, templates) }()

	sample := func() {
		for _, r := range relays {
			if r.PID > 0 {
				if st, err := ReadProcStatus(r.PID); err == nil && st.RSS > lr.peak[r.PID].RSS {
					lr.peak[r.PID] = st
				}
			}
		}
	}
	if err := ctxtime.Sleep(ctx, cfg.Warmup); err != nil {
		return nil, err
	}
	lr.markStart = sampler.mark(ctx)
	lr.startCount, lr.measureStart = f.Delivered(), sent.Now()
	startTime := time.Now()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	end := time.After(cfg.Duration)
	var kill <-chan time.Time
	if cfg.KillAfter > 0 {
		kill = time.After(cfg.KillAfter)
	}
measure:
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ticker.C:
			sample()
		case <-kill:
			sig := syscall.SIGKILL
			if cfg.KillSignal == "TERM" {
				sig = syscall.SIGTERM
			}
			pid := relays[cfg.KillRelay].PID
			lr.killAt = sent.Now()
			if err := syscall.Kill(pid, sig); err != nil {
				return nil, fmt.Errorf("stop relay %d (pid %d): %w", cfg.KillRelay, pid, err)
			}
			logf("sent SIG%s to relay %d (%s, pid %d)", cfg.KillSignal, cfg.KillRelay, relays[cfg.KillRelay].URL, pid)
		case <-end:
			break measure
		}
	}
	lr.endCount, lr.window, lr.measureEnd = f.Delivered(), time.Since(startTime), sent.Now()
	lr.markEnd = sampler.mark(ctx)
	<-prodDone
	expected := prod.Committed() * int64(cfg.Audience)
	deadline := time.Now().Add(cfg.Drain)
	// Workers' counts are a status report old: the wait errs on the long
	// side, and the tally uses their final counts.
	for f.Delivered() < expected && time.Now().Before(deadline) && f.Open() > 0 {
		if err := ctxtime.Sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
	sample()
	return lr, nil
}

// fillLoad writes the load part of the report from every process's counts.
func fillLoad(rep *Report, cfg Config, clients *Clients, lr *loadRun) {
	templates := cfg.Templates()
	prod := lr.prod
	missing, extra, missingOpen := clients.Tally(templates, cfg.Audience)
	failed, lastErr := prod.Failed()
	rep.Load = &LoadResult{
		Committed:        prod.Committed(),
		InsertFailures:   failed,
		ProducerBehind:   prod.Behind(),
		InsertP50:        ms(prod.InsertTime.Quantile(0.5)),
		InsertP99:        ms(prod.InsertTime.Quantile(0.99)),
		Expected:         prod.Committed() * int64(cfg.Audience),
		Delivered:        clients.Delivered(),
		Missing:          missing,
		MissingOpen:      missingOpen,
		Extra:            extra,
		Misordered:       clients.misordered.Load(),
		Foreign:          clients.foreign.Load(),
		BeforeAck:        clients.early.Load(),
		SlowConsumers:    clients.slow.Load(),
		StreamsEnded:     clients.ended.Load(),
		Reopened:         clients.reopened.Load(),
		DeliveriesPerSec: float64(lr.endCount-lr.startCount) / lr.window.Seconds(),
		Latency:          latencyOf(clients.Latency),
		FromSend:         latencyOf(clients.FromSend),
		MemoryPeak:       lr.peak,
	}
	if lastErr != nil {
		rep.Load.LastInsertError = lastErr.Error()
	}
	if err := clients.LastError(); err != nil {
		rep.Load.LastStreamError = err.Error()
	}
	rep.DB = &DBLoad{Measured: lr.dbMeasured, Timeline: lr.db}
	if lr.killAt > 0 {
		rep.Storm = stormOf(cfg, rep, clients, lr)
	}
}

// stormOf describes what followed the kill of a relay.
func stormOf(cfg Config, rep *Report, c *Clients, lr *loadRun) *StormResult {
	st := &StormResult{
		Relay: rep.Relays[cfg.KillRelay].URL, Signal: cfg.KillSignal,
		KilledAtS: float64(lr.killAt-lr.measureStart) / float64(time.Second),
		Reopened:  c.reopened.Load(), ReopenErrors: c.reopenErrs.Load(), WithoutID: c.withoutID.Load(), GaveUp: c.gaveUp.Load(),
		Resumed: latencyOf(c.Resumed),
	}
	for i := range cfg.Subscribers {
		if i%len(rep.Relays) == cfg.KillRelay {
			st.StreamsOnRelay++
		}
	}
	lastReopen, lastReplay := c.lastReopen.Load(), c.lastReplay.Load()
	if lastReopen > lr.killAt {
		st.AllReopenedMS = ms(time.Duration(lastReopen - lr.killAt))
	}
	caughtUp := max(lastReopen, lastReplay)
	if caughtUp > lr.killAt {
		st.CaughtUpMS = ms(time.Duration(caughtUp - lr.killAt))
	}
	// Timeline windows are whole seconds, each end rounded down: rounded
	// up here, the second in which the storm ends counts as during it, not
	// after it (a storm over within seconds has its worst moments there).
	sec := int64(time.Second)
	stormEnd := (max(caughtUp, lr.killAt+sec) + sec - 1) / sec * sec
	st.LiveBefore = latencyOf(c.Undisturbed.Window(lr.measureStart, lr.killAt))
	st.LiveDuring = latencyOf(c.Undisturbed.Window(lr.killAt, stormEnd))
	st.LiveAfter = latencyOf(c.Undisturbed.Window(stormEnd, lr.measureEnd))
	if st.LiveBefore.P99 > 0 {
		st.P99Ratio = st.LiveDuring.P99 / st.LiveBefore.P99
	}
	toS := func(t int64) float64 { return float64(t-lr.measureStart) / float64(time.Second) }
	st.DBBefore = summarize(lr.db, 0, toS(lr.killAt))
	st.DBDuring = summarize(lr.db, toS(lr.killAt), toS(stormEnd)+1)
	return st
}

func latencyOf(h *Histogram) LatencyResult {
	return LatencyResult{
		Count: h.Count(), P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)), Max: ms(h.Max()), Mean: ms(h.Mean()),
	}
}

// targetsFor assigns subscriber i of [from, to) to relay i mod len(relays)
// and to a loopback source address, PerSourceAddr connections per address:
// the same subscriber goes to the same relay and address whichever process
// opens its stream.
func targetsFor(cfg Config, relays []Relay, pop Population, from, to int, ttl time.Duration, sel *relaySelect) ([]Target, error) {
	bases := make([]*url.URL, len(relays))
	for i, r := range relays {
		u, err := parseURL(r.URL)
		if err != nil {
			return nil, err
		}
		bases[i] = u
	}
	srcs := SourceAddrs((cfg.Subscribers + cfg.PerSourceAddr - 1) / cfg.PerSourceAddr)
	dialers := make([]streamclient.Dialer, len(srcs))
	for i, a := range srcs {
		dialers[i] = Dialer(a, cfg.ConnectTimeout)
	}
	now := time.Now()
	out := make([]Target, 0, to-from)
	for i := from; i < to; i++ {
		if !sel.keeps(i, len(bases)) {
			continue
		}
		tok, err := auth.Issue([]byte(cfg.JWTSecret), pop.Subscriber(i), ttl, now)
		if err != nil {
			return nil, err
		}
		r := i % len(bases)
		out = append(out, Target{Loc: i / pop.Audience, Relay: r, Base: bases[r], Dial: dialers[i/cfg.PerSourceAddr], Token: tok})
	}
	return out, nil
}

func readMemory(relays []Relay) map[int]ProcStatus {
	out := map[int]ProcStatus{}
	for _, r := range relays {
		if r.PID > 0 {
			if st, err := ReadProcStatus(r.PID); err == nil {
				out[r.PID] = st
			}
		}
	}
	return out
}

// perSubscriber is the growth of the relays' resident memory while the
// streams opened, divided by the streams: what an idle subscriber costs.
func perSubscriber(before, after map[int]ProcStatus, relays []Relay, opened int) float64 {
	var grew int64
	measured := 0
	for _, r := range relays {
		b, ok1 := before[r.PID]
		a, ok2 := after[r.PID]
		if ok1 && ok2 {
			grew += a.RSS - b.RSS
			measured++
		}
	}
	if measured == 0 || measured != len(relays) || opened == 0 {
		return 0 // not every relay's memory is known: no honest figure
	}
	return float64(grew) / float64(opened)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
