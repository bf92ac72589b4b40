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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgrelay/pgrelay/relay/api"
	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/httpjson"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/limit"
	"github.com/pgrelay/pgrelay/relay/listen"
	"github.com/pgrelay/pgrelay/relay/metrics"
	"github.com/pgrelay/pgrelay/relay/reader"
	"github.com/pgrelay/pgrelay/relay/seal"
	"github.com/pgrelay/pgrelay/relay/sequencer"
	"github.com/pgrelay/pgrelay/relay/sse"
	"github.com/pgrelay/pgrelay/relay/stream"
	"github.com/pgrelay/pgrelay/relay/ws"
	"github.com/pgrelay/pgrelay/web"
)

// Application names the relay's database sessions carry, so operators (and
// tests) can find them in pg_stat_activity.
const (
	ListenerApplicationName = "pgrelay-listener"
	ApplicationName         = "pgrelay"
)

// readBatch is how many events one log read returns.
const readBatch = 1000

// Server is one relay instance.
type Server struct {
	cfg       Config
	log       *slog.Logger
	pool      *pgxpool.Pool
	hub       *hub.Hub
	streams   *stream.Opener
	refresher *filter.Refresher
	auth      *auth.Verifier
	limits    *limit.Limiter
	metrics   *metrics.Metrics
	name      string
	router    chi.Router
	ws        *ws.Handler
	sse       *sse.Handler

	reader     *reader.Reader
	key        *seal.Key
	isLeader   atomic.Bool
	reconnects atomic.Uint64
}

// New connects to the database, checks that it is migrated, and builds a
// relay. Call Run to serve.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = ApplicationName
	poolCfg.MaxConns = int32(cfg.PoolSize)
	if poolCfg.ConnConfig.ConnectTimeout == 0 {
		poolCfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	poolCfg.ConnConfig.BuildContextWatcherHandler = cancelOnServer
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	name := cfg.InstanceName()
	s := &Server{
		cfg:    cfg,
		name:   name,
		log:    log.With("relay", name),
		pool:   pool,
		hub:    hub.New(cfg.QueueSize, cfg.QueueBytes),
		limits: limit.New(cfg.MaxConnections, cfg.MaxConnectionsPerUser),
		auth: auth.NewVerifier([]byte(cfg.JWTSecret), auth.Options{
			Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, InsecureDev: cfg.InsecureDev,
		}),
	}
	if err := s.checkSchema(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if s.key, err = seal.Load(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	s.reader = reader.New(reader.Config{
		Channel: eventlog.AnnounceChannel, SafetyPoll: cfg.SafetyPoll, Batch: readBatch,
		// Half a queue: a fast client drains one slice before the next.
		BatchBytes:    cfg.QueueBytes / 2,
		CatchupEvents: func(n int) { s.metrics.CatchupEvents(n) },
	}, s.hub, poolLog{pool, eventlog.NewReader(cmp.Or(cfg.foreignListAge, eventlog.ForeignListAge))}, s.key, s.log)
	s.streams = &stream.Opener{
		Pool: pool, Hub: s.hub, Log: s.log, Heartbeat: cfg.Heartbeat, CatchupBatch: readBatch, CatchupBytes: cfg.QueueBytes,
		Filters: filter.NewBatcher(pool, s.hub.NextGeneration, 500),
	}
	s.refresher = filter.NewRefresher(pool, s.hub, s.log, cfg.FilterResync)
	s.metrics = s.newMetrics()
	s.refresher.Reloaded = s.metrics.FiltersReloaded
	s.router = s.routes()
	return s, nil
}

// checkSchema fails early, with advice, when the database is unreachable or
// not migrated, and positions the hub at the end of the log.
func (s *Server) checkSchema(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	var migrated bool
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass('relay.events') IS NOT NULL AND to_regclass('relay.topics') IS NOT NULL").Scan(&migrated); err != nil {
		return fmt.Errorf("check database schema: %w", err)
	}
	if !migrated {
		return errors.New("database is not migrated: run `migrate up` against it first")
	}
	if _, err := filter.Topics(ctx, s.pool); err != nil {
		return err
	}
	tail, err := eventlog.Tail(ctx, s.pool)
	if err != nil {
		return err
	}
	s.hub.Start(tail)
	return nil
}

// Handler returns the relay's HTTP handler.
func (s *Server) Handler() http.Handler { return s.router }

// Hub returns the relay's hub (for inspection).
func (s *Server) Hub() *hub.Hub { return s.hub }

// Ready reports whether the relay is listening, caught up with the log and
// has its filters loaded.
func (s *Server) Ready() bool { return s.reader.Ready() }

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.corsMiddleware())
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		status := http.StatusOK
		if !s.Ready() {
			status = http.StatusServiceUnavailable
		}
		httpjson.Write(w, status, map[string]any{
			"ready": status == http.StatusOK, "listening": s.reader.Listening(),
			"caught_up": s.reader.CaughtUp(), "sequencer": s.isLeader.Load(), "relay": s.name,
			"position": s.hub.Position().String(), "forged_notifications": s.reader.Forged(),
		})
	})
	if s.cfg.MetricsAddr == "" {
		r.Method(http.MethodGet, "/metrics", s.metrics.Handler())
	}
	sseMetrics := s.metrics.Transport("sse")
	gate := &stream.Gate{Auth: s.auth, Opener: s.streams, Limiter: s.limits, Log: s.log}
	s.sse = &sse.Handler{
		Gate: gate, Transport: stream.Transport{Name: "sse", Observer: sseMetrics, Connected: sseMetrics.Connected},
		Log: s.log, WriteTimeout: s.cfg.WriteTimeout, Heartbeat: s.cfg.Heartbeat, Retry: 2 * time.Second,
	}
	r.Method(http.MethodGet, "/events", s.sse)
	wsMetrics := s.metrics.Transport("ws")
	s.ws = &ws.Handler{
		Gate: gate, Transport: stream.Transport{Name: "ws", Observer: wsMetrics, Connected: wsMetrics.Connected},
		Log: s.log, WriteTimeout: s.cfg.WriteTimeout, Heartbeat: s.cfg.Heartbeat, OriginPatterns: s.cfg.CORSOrigins,
	}
	r.Method(http.MethodGet, "/ws", s.ws)
	r.Mount("/api", &api.Handler{Auth: s.auth, DB: s.pool, Log: s.log, ListUsers: s.cfg.InsecureDev, Write: s.cfg.WriteAPI})
	r.Handle("/*", web.Handler())
	return r
}

// Run serves on ln until ctx is done, then shuts down: streams are told to
// reconnect elsewhere and the HTTP server drains within ShutdownWait.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	defer s.pool.Close()
	if s.cfg.InsecureDev {
		s.log.Warn("INSECURE DEV MODE: any client may connect as any user with ?user=ID; never use this in production")
	}
	srv := &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: 10 * time.Second,
		// Without it a keep-alive connection would be kept as long as its
		// client likes: a socket each, and not counted as a stream.
		IdleTimeout: s.cfg.IdleTimeout,
		// net/http's own complaints go to the relay's log; they name the
		// remote address, never the request URL (which may carry a token).
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.listenLoop(gctx) })
	g.Go(func() error { return s.reader.Run(gctx) })
	g.Go(func() error { return s.sequencerLoop(gctx) })
	g.Go(func() error { return s.refresher.Run(gctx) })
	g.Go(func() error { return s.sse.Run(gctx) })
	g.Go(func() error { return s.ws.Run(gctx) })
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
		return nil
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	s.log.Info("relay stopped")
	return err
}

// ListenAndRun listens on the configured address and runs.
func (s *Server) ListenAndRun(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Run(ctx, ln)
}

// cancelOnServer makes a cancelled context stop a pool query by asking the
// server to cancel it, rather than pgx's default of putting a deadline on the
// socket. A deadline that cuts a write short leaves a TLS connection unusable,
// and closing it then waits up to 15 s for the server, which held a relay's
// shutdown (the pool's Close) that long when a stream's replay was cut off.
// The socket deadline remains, later, for a server that does not answer.
// Only for the pool: the dedicated connections wait for notifications with
// short timeouts, which a cancel request (nothing to cancel) would not end.
func cancelOnServer(c *pgconn.PgConn) ctxwatch.Handler {
	return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 2 * time.Second}
}

// connect opens a dedicated connection named appName.
func (s *Server) connect(url, appName string) func(ctx context.Context) (*pgx.Conn, error) {
	return func(ctx context.Context) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			return nil, fmt.Errorf("bad database URL: %w", err)
		}
		cfg.RuntimeParams["application_name"] = appName
		if cfg.ConnectTimeout == 0 {
			cfg.ConnectTimeout = 10 * time.Second
		}
		return pgx.ConnectConfig(ctx, cfg)
	}
}

func (s *Server) listenURL() string {
	if s.cfg.ListenDatabaseURL != "" {
		return s.cfg.ListenDatabaseURL
	}
	return s.cfg.DatabaseURL
}

func (s *Server) listenLoop(ctx context.Context) error {
	l := listen.New(s.connect(s.listenURL(), ListenerApplicationName), listenHandler{s.reader, s.refresher}, s.log)
	l.OnReconnect = func() { s.reconnects.Add(1) }
	return l.Run(ctx)
}

func (s *Server) sequencerLoop(ctx context.Context) error {
	seq := sequencer.New(s.connect(s.listenURL(), ApplicationName), s.key, sequencer.Config{
		Poll: s.cfg.PollInterval, IdleAfter: s.cfg.IdleAfter, IdlePoll: s.cfg.IdlePoll, Retry: time.Second,
	}, s.log)
	seq.OnLeader = s.isLeader.Store
	seq.Duties = s.pruneLog
	return seq.Run(ctx)
}

// listenHandler hands announcements and connection changes to the reader,
// and filter changes to the refresher.
type listenHandler struct {
	*reader.Reader
	refresher *filter.Refresher
}

func (h listenHandler) FiltersChanged(c filter.Change) { h.refresher.Notify(c) }

// poolLog reads the log through the pool.
type poolLog struct {
	pool   *pgxpool.Pool
	events *eventlog.Reader
}

func (l poolLog) ReadBetween(ctx context.Context, after, upto eventlog.ID, b eventlog.Batch) ([]eventlog.Event, bool, error) {
	return eventlog.ReadBetweenBatch(ctx, l.pool, after, upto, b)
}

func (l poolLog) ReadAfter(ctx context.Context, after eventlog.ID, b eventlog.Batch) ([]eventlog.Event, bool, error) {
	return l.events.ReadAfterBatch(ctx, l.pool, after, b)
}

func (l poolLog) Forget() { l.events.Forget() }
