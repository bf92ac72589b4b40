// Package relay wires pgrelay's parts into one server: the LISTEN loop, the
// sequencer election, the log reader that feeds the hub, the filter
// refresher, and the HTTP transports.
//
// Data path: capture trigger → relay.events → sequencer announces →
// listener wakes the reader → hub matches and queues → stream writes to the
// client (SSE or WebSocket).
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/graphql"
	"github.com/pgrelay/pgrelay/relay/graphql/schema"
	"github.com/pgrelay/pgrelay/relay/httpconn"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/listen"
	"github.com/pgrelay/pgrelay/relay/metrics"
	"github.com/pgrelay/pgrelay/relay/reader"
	"github.com/pgrelay/pgrelay/relay/replay"
	"github.com/pgrelay/pgrelay/relay/sequencer"
	"github.com/pgrelay/pgrelay/relay/sse"
	"github.com/pgrelay/pgrelay/relay/stream"
	"github.com/pgrelay/pgrelay/relay/walcapture"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// Application names the relay's database sessions carry, so operators (and
// tests) can find them in pg_stat_activity.
const (
	ListenerApplicationName = "pgrelay-listener"
	ApplicationName         = "pgrelay"
)

// schemaMaxAge is how long the GraphQL schema is served before the topics'
// columns are read again: topics added in SQL appear within it.
const schemaMaxAge = 5 * time.Second

// readHeaderTimeout bounds how long a connection may take to send its
// request's header.
const readHeaderTimeout = 10 * time.Second

// readBatch is how many events one log read returns.
const readBatch = 1000

// Server is one relay instance: the parts New builds, which Run runs.
type Server struct {
	cfg  Config
	log  *slog.Logger
	name string
	pool *pgxpool.Pool

	verifier  *auth.Verifier
	hub       *hub.Hub
	reader    *reader.Reader
	recent    *replay.Window
	opener    *stream.Opener
	listener  *listen.Listener
	sequencer *sequencer.Sequencer
	refresher *filter.Refresher
	opening   *limit.Opening
	conns     *httpconn.Watch
	metrics   *metrics.Metrics
	sse       *sse.Handler
	ws        *ws.Handler
	graphql   *graphql.Handler
	router    chi.Router

	isLeader atomic.Bool
	capture  walcapture.Status
}

// New connects to the database, checks that it is migrated, and builds a
// relay. Call Run to serve. Each part is built from the parts before it.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	name := cfg.InstanceName()
	s := &Server{cfg: cfg, name: name, log: log.With("relay", name)}
	verifier, err := auth.Open(ctx, cfg.authKeys(s.log), auth.Options{
		Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, SubjectClaim: cfg.JWTSubjectClaim, InsecureDev: cfg.InsecureDev,
	})
	if err != nil {
		return nil, err
	}
	s.verifier = verifier
	pool, err := openPool(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.pool = pool
	tail, key, err := checkSchema(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}

	s.hub = hub.New(cfg.QueueSize, cfg.QueueBytes)
	s.hub.Start(tail)
	s.recent = replay.New(cfg.ReplayCacheBytes)
	s.reader = reader.New(reader.Config{
		Channel: eventlog.AnnounceChannel, SafetyPoll: cfg.SafetyPoll, Batch: readBatch,
		// Half a queue: a fast client drains one slice before the next.
		BatchBytes: cfg.QueueBytes / 2,
		Recent:     s.recent,
	}, s.hub, poolLog{pool, eventlog.NewReader(cmp.Or(cfg.foreignListAge, eventlog.ForeignListAge))}, key, s.log)
	s.refresher = filter.NewRefresher(pool, s.hub, s.log, cfg.FilterResync)
	s.listener = listen.New(connector(cfg.listenURL(), ListenerApplicationName), listenHandler{s.reader, s.refresher}, s.log)
	// The capture tells the sequencer of each log transaction it committed,
	// so the poll that announces its events follows at once.
	appended := make(chan struct{}, 1)
	s.sequencer = sequencer.New(connector(cfg.listenURL(), ApplicationName), key, sequencer.Config{
		Poll: cfg.PollInterval, PollMax: cfg.PollIntervalMax, StretchRate: float64(cfg.PollStretchRate),
		IdleAfter: cfg.IdleAfter, IdlePoll: cfg.IdlePoll, Retry: cfg.ElectionInterval,
		OnLeader: s.isLeader.Store, Duties: s.pruneLog, News: appended,
		Capture: walcapture.New(walcapture.Config{
			Connect:            connector(cfg.listenURL(), ApplicationName),
			ConnectReplication: walcapture.ReplicationConnector(cfg.listenURL(), ApplicationName),
			Observer:           &s.capture,
			Wake: func() {
				select {
				case appended <- struct{}{}:
				default:
				}
			},
		}, s.log).Run,
	}, s.log)
	s.opening = limit.NewOpening(cfg.openConcurrency(), cfg.MaxOpening, cfg.OpenWait)
	s.conns = &httpconn.Watch{ReadHeaderTimeout: readHeaderTimeout}
	s.metrics = s.newMetrics()

	s.opener = &stream.Opener{
		DB: pool, Hub: s.hub, Log: s.log, Heartbeat: cfg.Heartbeat, CatchupBatch: readBatch, CatchupBytes: cfg.QueueBytes,
		Filters: filter.NewBatcher(pool, s.hub.NextGeneration, 500),
		Recent:  s.recent,
		Horizons: replay.NewHorizons(func(ctx context.Context) (eventlog.ID, error) {
			return eventlog.Horizon(ctx, pool)
		}),
	}
	gate := &stream.Gate{
		Auth:    s.verifier,
		Opener:  s.opener,
		Limiter: limit.New(cfg.MaxConnections, cfg.MaxConnectionsPerUser),
		Opening: s.opening,
		Log:     s.log,
	}
	sseMetrics, wsMetrics := s.metrics.Transport("sse"), s.metrics.Transport("ws")
	s.sse = &sse.Handler{
		Gate: gate, Transport: stream.Transport{Name: "sse", Observer: sseMetrics, Connected: sseMetrics.Connected, Refusals: sseMetrics.Refused},
		Log: s.log, WriteTimeout: cfg.WriteTimeout, Heartbeat: cfg.Heartbeat, Retry: 2 * time.Second,
	}
	s.ws = &ws.Handler{
		Gate: gate, Transport: stream.Transport{Name: "ws", Observer: wsMetrics, Connected: wsMetrics.Connected, Refusals: wsMetrics.Refused},
		Log: s.log, WriteTimeout: cfg.WriteTimeout, Heartbeat: cfg.Heartbeat, OriginPatterns: cfg.CORSOrigins,
	}
	graphqlMetrics := s.metrics.Transport("graphql")
	s.graphql = &graphql.Handler{
		Gate: gate, Transport: stream.Transport{Name: "graphql", Observer: graphqlMetrics, Connected: graphqlMetrics.Connected, Refusals: graphqlMetrics.Refused},
		Schema: schema.NewCache(pool, schemaMaxAge, func(reason string) { s.log.Warn("left out of the graphql schema", "why", reason) }),
		Log:    s.log, WriteTimeout: cfg.WriteTimeout, Heartbeat: cfg.Heartbeat, InitTimeout: cfg.GraphQLInitTimeout,
		MaxOperations: cfg.GraphQLMaxSubscriptions, OriginPatterns: cfg.CORSOrigins,
		Connections: limit.New(cfg.MaxConnections, cfg.MaxConnectionsPerUser),
	}
	s.router = s.routes(gate.Auth)
	return s, nil
}

// Handler returns the relay's HTTP handler.
func (s *Server) Handler() http.Handler { return s.router }

// Hub returns the relay's hub (for inspection).
func (s *Server) Hub() *hub.Hub { return s.hub }

// Ready reports whether the relay is listening, caught up with the log and
// has its filters loaded.
func (s *Server) Ready() bool { return s.reader.Ready() }

// Run serves on ln until ctx is done, then shuts down: streams are told to
// reconnect elsewhere and the HTTP server drains within ShutdownWait.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	defer s.pool.Close()
	if s.cfg.InsecureDev {
		s.log.Warn("INSECURE DEV MODE: any client may connect as any user with ?user=ID; never use this in production")
	}
	srv := &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: s.conns.ReadHeaderTimeout,
		// Connections closed before a request was read get no answer and
		// no word from net/http: counted and logged here.
		ConnState: s.conns.ConnState,
		// Without it a keep-alive connection would be kept as long as its
		// client likes: a socket each, and not counted as a stream.
		IdleTimeout: s.cfg.IdleTimeout,
		// net/http's own complaints go to the relay's log; they name the
		// remote address, never the request URL (which may carry a token).
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.listener.Run(gctx) })
	g.Go(func() error { return s.reader.Run(gctx) })
	g.Go(func() error { return s.sequencer.Run(gctx) })
	g.Go(func() error { return s.refresher.Run(gctx) })
	g.Go(func() error { return s.verifier.Run(gctx) })
	g.Go(func() error { return s.sse.Run(gctx) })
	g.Go(func() error { return s.ws.Run(gctx) })
	g.Go(func() error { return s.graphql.Run(gctx) })
	g.Go(func() error { return s.conns.Run(gctx, s.log, time.Minute) })
	if s.cfg.PprofAddr != "" {
		g.Go(func() error { return servePprof(gctx, s.cfg.PprofAddr, s.log) })
	}
	if s.cfg.MetricsAddr != "" {
		g.Go(func() error { return s.serveMetrics(gctx) })
	}
	g.Go(func() error {
		s.log.Info("relay serving", "addr", ln.Addr().String())
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		s.hub.Shutdown()
		drainCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownWait)
		defer cancel()
		if err := srv.Shutdown(drainCtx); err != nil {
			s.log.Warn("shutdown deadline passed; closing remaining connections", "err", err)
			_ = srv.Close()
		}
		// Shutdown does not wait for hijacked (WebSocket) connections.
		if err := s.ws.Wait(drainCtx); err != nil {
			s.log.Warn("shutdown deadline passed with websocket streams still closing", "err", err)
		}
		if err := s.graphql.Wait(drainCtx); err != nil {
			s.log.Warn("shutdown deadline passed with graphql connections still closing", "err", err)
		}
		return nil
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	s.log.Info("relay stopped")
	return err
}
