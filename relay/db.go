package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/reader"
	"github.com/pgrelay/pgrelay/relay/seal"
)

// openPool opens the pool most of the relay's reads go through.
func openPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
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
	return pool, nil
}

// checkSchema fails early, with advice, when the database is unreachable or
// not migrated, and returns the position of the end of the log and the key
// announcements are sealed with.
func checkSchema(ctx context.Context, pool *pgxpool.Pool) (eventlog.ID, *seal.Key, error) {
	if err := pool.Ping(ctx); err != nil {
		return eventlog.ID{}, nil, fmt.Errorf("connect to database: %w", err)
	}
	var migrated bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('relay.events') IS NOT NULL AND to_regclass('relay.topics') IS NOT NULL").Scan(&migrated); err != nil {
		return eventlog.ID{}, nil, fmt.Errorf("check database schema: %w", err)
	}
	if !migrated {
		return eventlog.ID{}, nil, errors.New("database is not migrated: run `migrate up` against it first")
	}
	if _, err := filter.Topics(ctx, pool); err != nil {
		return eventlog.ID{}, nil, err
	}
	tail, err := eventlog.Tail(ctx, pool)
	if err != nil {
		return eventlog.ID{}, nil, err
	}
	key, err := seal.Load(ctx, pool)
	if err != nil {
		return eventlog.ID{}, nil, err
	}
	return tail, key, nil
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

// connector opens dedicated connections to url named appName.
func connector(url, appName string) func(ctx context.Context) (*pgx.Conn, error) {
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

// listenHandler hands announcements and connection changes to the reader,
// and filter changes to the refresher.
type listenHandler struct {
	*reader.Reader
	refresher *filter.Refresher
}

func (h listenHandler) FiltersChanged(c filter.Change) { h.refresher.Notify(c) }
