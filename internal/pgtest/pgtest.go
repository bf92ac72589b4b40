// Package pgtest gives each test its own PostgreSQL database, so tests run in
// parallel against a real server.
//
// The server is TEST_DATABASE_URL, or libpq's defaults (PGHOST etc.) with
// 127.0.0.1 as the host when PGHOST is unset. A migrated template database,
// named after a checksum of the embedded SQL, is built once and cloned with
// CREATE DATABASE … TEMPLATE for every test, which takes a few tens of
// milliseconds.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgrelay/pgrelay/internal/migrate"
)

// templateLock serialises template creation across test processes.
const templateLock int64 = 0x7067_7465_7374

// DB is a test's own database.
type DB struct {
	// Name is the database name.
	Name string
	// URL connects to it.
	URL string
	// Pool is a small pool on it, closed when the test ends.
	Pool *pgxpool.Pool
}

// Exec runs sql on the test's database and fails the test on error.
func (db *DB) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// AdminConfig parses the configuration of the server tests run against.
func AdminConfig() (*pgx.ConnConfig, error) {
	url := os.Getenv("TEST_DATABASE_URL")
	if url == "" {
		url = "dbname=postgres"
		if os.Getenv("PGHOST") == "" {
			url += " host=127.0.0.1"
		}
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse TEST_DATABASE_URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return cfg, nil
}

// URLFor returns a connection string for database name on the test server.
func URLFor(cfg *pgx.ConnConfig, name string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s", quote(cfg.Host), cfg.Port, quote(cfg.User), quote(name))
	if cfg.Password != "" {
		s += " password=" + quote(cfg.Password)
	}
	return s
}

func quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func connectAdmin(t testing.TB) (*pgx.Conn, *pgx.ConnConfig) {
	t.Helper()
	cfg, err := AdminConfig()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "53300" {
		t.Fatalf("connect to the test PostgreSQL server (%s:%d): %v\n"+
			"The suite runs many relays at once; raise the server's limit with\n"+
			"  ALTER SYSTEM SET max_connections = 300; -- then restart PostgreSQL",
			cfg.Host, cfg.Port, err)
	}
	if err != nil {
		t.Fatalf("connect to the test PostgreSQL server (%s:%d): %v\n"+
			"Tests need a running PostgreSQL. Start it with\n"+
			"  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"+
			"or point TEST_DATABASE_URL at a server where this user may create databases.",
			cfg.Host, cfg.Port, err)
	}
	return conn, cfg
}

// Empty returns a fresh database with nothing installed, dropped when the test
// ends.
func Empty(t testing.TB) *DB {
	t.Helper()
	return create(t, "")
}

// New returns a fresh database with pgrelay and its example app migrated,
// as `migrate up` leaves it, dropped when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	src, err := migrate.Embedded()
	if err != nil {
		t.Fatalf("load embedded migrations: %v", err)
	}
	return create(t, ensureTemplate(t, src))
}

// NewCore returns a fresh database with the relay core alone migrated, as
// `migrate up --no-example` leaves it, dropped when the test ends.
func NewCore(t testing.TB) *DB {
	t.Helper()
	src, err := migrate.Core()
	if err != nil {
		t.Fatalf("load embedded core migrations: %v", err)
	}
	return create(t, ensureTemplate(t, src))
}

func create(t testing.TB, template string) *DB {
	t.Helper()
	admin, cfg := connectAdmin(t)
	defer admin.Close(context.Background())
	name := "pgrelay_test_" + randomSuffix()
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := admin.Exec(context.Background(), sql); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	db := &DB{Name: name, URL: URLFor(cfg, name)}
	t.Cleanup(func() { drop(t, name) })

	poolCfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatalf("parse test database URL: %v", err)
	}
	poolCfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), poolCfg)
	if err != nil {
		t.Fatalf("open pool on test database: %v", err)
	}
	db.Pool = pool
	t.Cleanup(pool.Close)
	return db
}

func drop(t testing.TB, name string) {
	ctx := context.Background()
	admin, _ := connectAdmin(t)
	defer admin.Close(ctx)
	// FORCE: a relay under test may still hold connections while it shuts
	// down. FORCE does not cover a walsender still streaming a slot of the
	// database (capture mode wal): PostgreSQL refuses the drop while the
	// slot is active, and the walsender of a relay that just stopped may
	// not have seen its connection close yet. Such walsenders are ended
	// and the drop tried again, for up to 10 s.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || time.Now().After(deadline) {
			if err != nil {
				t.Errorf("drop test database %s: %v", name, err)
			}
			return
		}
		t.Logf("drop test database %s: a walsender still streams its slot; ending it", name)
		if _, err := admin.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots
		                              WHERE database = $1 AND active_pid IS NOT NULL`, name); err != nil {
			t.Errorf("end the walsenders of test database %s: %v", name, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ensureTemplate builds the template database migrated with src, once per
// server and SQL, and returns its name.
func ensureTemplate(t testing.TB, src migrate.Source) string {
	t.Helper()
	h := sha256.New()
	for _, m := range src.Migrations {
		fmt.Fprintf(h, "%s\n%s\n", m.Name, m.Checksum)
	}
	for _, r := range src.Repeatables {
		fmt.Fprintf(h, "%s\n%s\n", r.Name, r.Checksum)
	}
	name := "pgrelay_template_" + hex.EncodeToString(h.Sum(nil))[:16]

	ctx := context.Background()
	admin, cfg := connectAdmin(t)
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", templateLock); err != nil {
		t.Fatalf("lock template creation: %v", err)
	}
	defer admin.Exec(ctx, "SELECT pg_advisory_unlock($1)", templateLock) //nolint:errcheck // released on close anyway

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatalf("look up template database: %v", err)
	}
	if exists {
		return name
	}
	// Build under a temporary name and rename, so a crash never leaves a
	// half-migrated template behind under the real name.
	building := name + "_building"
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatalf("drop stale template: %v", err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()); err != nil {
		t.Fatalf("create template database: %v", err)
	}
	conn, err := pgx.Connect(ctx, URLFor(cfg, building))
	if err != nil {
		t.Fatalf("connect to template database: %v", err)
	}
	_, err = migrate.New(conn, src, nil).Up(ctx)
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("migrate template database: %v", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{building}.Sanitize()+" RENAME TO "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("rename template database: %v", err)
	}
	return name
}
