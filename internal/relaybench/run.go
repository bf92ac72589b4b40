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
	"runtime"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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
	if _, err := RaiseFileLimit(uint64(cfg.Subscribers) + 4096); err != nil {
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

	poolCfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	poolCfg.MaxConns = int32(cfg.Workers + 2)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "relaybench"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	defer pool.Close()
	if err := pool.QueryRow(ctx, "SELECT version()").Scan(&rep.Machine.PostgreSQL); err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}

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
	defer clients.Close()

	targets, err := targetsFor(cfg, relays, pop)
	if err != nil {
		return nil, err
	}
	logf("opening %d %s streams on %d relay(s)", len(targets), cfg.Transport, len(relays))
	connectStart := time.Now()
	opened, errs := clients.Connect(ctx, targets, cfg.ConnectConcurrency, cfg.ConnectTimeout)
	rep.Connect = ConnectResult{Opened: opened, Seconds: time.Since(connectStart).Seconds(),
		P50: ms(clients.ConnectTime.Quantile(0.5)), P99: ms(clients.ConnectTime.Quantile(0.99))}
	for _, e := range errs {
		rep.Connect.Errors = append(rep.Connect.Errors, e.Error())
	}
	logf("%d streams open in %.1fs", opened, rep.Connect.Seconds)
	if opened == 0 {
		return rep, fmt.Errorf("no stream could be opened: %w", errors.Join(errs...))
	}
	if err := sleep(ctx, cfg.Settle); err != nil {
		return rep, err
	}
	rep.MemoryIdle = readMemory(relays)
	rep.PerSubscriber = perSubscriber(rep.MemoryBefore, rep.MemoryIdle, relays, opened)

	if templates > 0 {
		if err := produce(ctx, cfg, pool, pop, sent, clients, rep, relays, logf); err != nil {
			return rep, err
		}
	}
	rep.Machine.LoadAfter = LoadAvg()
	if cfg.PlotPath != "" {
		if err := WritePlot(cfg.PlotPath, rep, clients.Latency); err != nil {
			return rep, err
		}
	}
	if cfg.JSONPath != "" {
		rep.CDF = clients.Latency.CDF()
		if err := rep.WriteJSON(cfg.JSONPath); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// produce runs the producer for warm-up and measurement, waits for the last
// deliveries and fills in the load part of the report.
func produce(ctx context.Context, cfg Config, pool *pgxpool.Pool, pop Population, sent *Sent, clients *Clients,
	rep *Report, relays []Relay, logf func(string, ...any)) error {
	templates := cfg.Templates()
	prod := &Producer{Pool: pool, Population: pop, Rate: cfg.Rate, Workers: cfg.Workers, Sent: sent, InsertTime: &Histogram{}}
	logf("inserting %d templates at %.0f/s (%s warm-up, %s measured), each to %d subscribers",
		templates, cfg.Rate, cfg.Warmup, cfg.Duration, cfg.Audience)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prodDone := make(chan struct{})
	go func() { defer close(prodDone); prod.Run(pctx, templates) }()

	peak := map[int]ProcStatus{}
	sample := func() {
		for _, r := range relays {
			if r.PID > 0 {
				if st, err := ReadProcStatus(r.PID); err == nil && st.RSS > peak[r.PID].RSS {
					peak[r.PID] = st
				}
			}
		}
	}
	if err := sleep(ctx, cfg.Warmup); err != nil {
		return err
	}
	startCount, startTime := clients.Delivered(), time.Now()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	end := time.After(cfg.Duration)
measure:
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			sample()
		case <-end:
			break measure
		}
	}
	endCount, window := clients.Delivered(), time.Since(startTime)
	<-prodDone
	expected := prod.Committed() * int64(cfg.Audience)
	deadline := time.Now().Add(cfg.Drain)
	for clients.Delivered() < expected && time.Now().Before(deadline) && clients.Open() > 0 {
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	sample()
	missing, extra := clients.Tally(templates, cfg.Audience)
	failed, lastErr := prod.Failed()
	lat := clients.Latency
	rep.Load = &LoadResult{
		Committed:        prod.Committed(),
		InsertFailures:   failed,
		ProducerBehind:   prod.Behind(),
		InsertP50:        ms(prod.InsertTime.Quantile(0.5)),
		InsertP99:        ms(prod.InsertTime.Quantile(0.99)),
		Expected:         expected,
		Delivered:        clients.Delivered(),
		Missing:          missing,
		Extra:            extra,
		Misordered:       clients.misordered.Load(),
		Foreign:          clients.foreign.Load(),
		BeforeAck:        clients.early.Load(),
		SlowConsumers:    clients.slow.Load(),
		StreamsEnded:     clients.ended.Load(),
		DeliveriesPerSec: float64(endCount-startCount) / window.Seconds(),
		Latency: LatencyResult{
			Count: lat.Count(), P50: ms(lat.Quantile(0.5)), P90: ms(lat.Quantile(0.9)), P99: ms(lat.Quantile(0.99)),
			P999: ms(lat.Quantile(0.999)), Max: ms(lat.Max()), Mean: ms(lat.Mean()),
		},
		FromSend: LatencyResult{
			Count: clients.FromSend.Count(), P50: ms(clients.FromSend.Quantile(0.5)), P90: ms(clients.FromSend.Quantile(0.9)),
			P99: ms(clients.FromSend.Quantile(0.99)), P999: ms(clients.FromSend.Quantile(0.999)), Max: ms(clients.FromSend.Max()), Mean: ms(clients.FromSend.Mean()),
		},
		MemoryPeak: peak,
	}
	if lastErr != nil {
		rep.Load.LastInsertError = lastErr.Error()
	}
	if err, _ := clients.lastErr.Load().(error); err != nil {
		rep.Load.LastStreamError = err.Error()
	}
	return nil
}

// targetsFor assigns subscriber i to relay i mod len(relays) and to a
// loopback source address, PerSourceAddr connections per address.
func targetsFor(cfg Config, relays []Relay, pop Population) ([]Target, error) {
	bases := make([]Target, len(relays))
	for i, r := range relays {
		u, err := parseURL(r.URL)
		if err != nil {
			return nil, err
		}
		bases[i].Base = u
	}
	srcs := SourceAddrs((cfg.Subscribers + cfg.PerSourceAddr - 1) / cfg.PerSourceAddr)
	dialers := make([]streamclient.Dialer, len(srcs))
	for i, a := range srcs {
		dialers[i] = Dialer(a, cfg.ConnectTimeout)
	}
	ttl := cfg.Warmup + cfg.Duration + cfg.Drain + time.Hour
	now := time.Now()
	out := make([]Target, cfg.Subscribers)
	for i := range out {
		tok, err := auth.Issue([]byte(cfg.JWTSecret), pop.Subscriber(i), ttl, now)
		if err != nil {
			return nil, err
		}
		out[i] = Target{Base: bases[i%len(bases)].Base, Dial: dialers[i/cfg.PerSourceAddr], Token: tok}
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

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
