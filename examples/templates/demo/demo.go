// Package demo runs the one-command demo (`relay demo`): a fresh database
// with the seed story, four relays in one process on consecutive ports (the
// classic four-instance cluster whose in-memory emitters could not talk to
// each other), one sign-in link per user, each on a different relay, and a
// producer inserting a template every few seconds from a rotating user.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgrelay/pgrelay/examples/templates"
	"github.com/pgrelay/pgrelay/internal/migrate"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
)

// DefaultDatabase is the database the demo (re)creates.
const DefaultDatabase = "pgrelay_demo"

// StartPostgres is the advice given when no server answers.
const StartPostgres = "start PostgreSQL with\n  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n" +
	"or set DATABASE_URL to a server where you may create databases"

// tokenTTL is how long the printed sign-in links work.
const tokenTTL = 24 * time.Hour

// Config is what the demo can be told.
type Config struct {
	// DatabaseURL names the server (its database part is ignored). Empty:
	// libpq defaults (PGHOST etc.), with host 127.0.0.1 when PGHOST is unset.
	DatabaseURL string
	// Database is the demo database, dropped and created on every run.
	Database string
	// Host is where the relays listen.
	Host string
	// BasePort is the first relay's port; the others follow. 0 picks free
	// ports (for tests).
	BasePort int
	// Relays is how many relays to run.
	Relays int
	// Interval is the pause between generated templates.
	Interval time.Duration
	// Quiet turns the template generator off.
	Quiet bool
	// Getenv reads PGHOST (default os.Getenv).
	Getenv func(string) string
}

// DefaultConfig returns the demo's defaults: four relays on 3001–3004.
func DefaultConfig() Config {
	return Config{Database: DefaultDatabase, Host: "127.0.0.1", BasePort: 3001, Relays: 4, Interval: 3 * time.Second}
}

// User is a seeded user and the link that signs in as them.
type User struct {
	ID, Name, Type, Org string
	// Relay is the base URL of the relay this user's link points to.
	Relay string
	// Token is the user's JWT; URL is the demo page with it in the
	// fragment.
	Token, URL string
}

// Demo is a prepared demo: database ready, ports bound.
type Demo struct {
	cfg       Config
	log       *slog.Logger
	dbURL     string
	secret    string
	listeners []net.Listener
	users     []User
}

// Setup (re)creates and seeds the demo database, binds the relays' ports and
// issues the users' tokens. Call Run to serve, or Close to give up.
func Setup(ctx context.Context, cfg Config, log *slog.Logger) (*Demo, error) {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Relays < 1 || cfg.Interval <= 0 || cfg.Database == "" {
		return nil, fmt.Errorf("demo: need at least one relay, a positive interval and a database name")
	}
	server, err := serverURL(cfg.DatabaseURL, cfg.Getenv)
	if err != nil {
		return nil, err
	}
	d := &Demo{cfg: cfg, log: log}
	if d.dbURL, err = withDatabase(server, cfg.Database); err != nil {
		return nil, err
	}
	maintenance, err := withDatabase(server, "postgres")
	if err != nil {
		return nil, err
	}
	if err := createDatabase(ctx, maintenance, cfg.Database); err != nil {
		return nil, err
	}
	if err := migrateAndSeed(ctx, d.dbURL); err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	d.secret = hex.EncodeToString(secret)
	if err := d.listen(); err != nil {
		return nil, err
	}
	if err := d.issueLinks(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// serverURL applies the defaults to the configured server.
func serverURL(dbURL string, getenv func(string) string) (string, error) {
	if dbURL == "" && getenv("PGHOST") == "" {
		dbURL = "host=127.0.0.1"
	}
	if _, err := pgx.ParseConfig(dbURL); err != nil {
		return "", fmt.Errorf("bad database URL: %w", err)
	}
	return dbURL, nil
}

// withDatabase returns dbURL naming database name instead.
func withDatabase(dbURL, name string) (string, error) {
	if strings.HasPrefix(dbURL, "postgres://") || strings.HasPrefix(dbURL, "postgresql://") {
		u, err := url.Parse(dbURL)
		if err != nil {
			return "", fmt.Errorf("bad database URL: %w", err)
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	// Keyword/value form: a later dbname overrides an earlier one.
	return strings.TrimSpace(dbURL + " dbname='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name) + "'"), nil
}

func connect(ctx context.Context, dbURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	cfg.RuntimeParams["application_name"] = "pgrelay-demo"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s:%d (%w);\n%s", cfg.Host, cfg.Port, err, StartPostgres)
	}
	return conn, nil
}

// createDatabase drops and creates the demo database, so every run starts
// from the seed story. FORCE ends the sessions of a demo still running.
func createDatabase(ctx context.Context, maintenanceURL, name string) error {
	conn, err := connect(ctx, maintenanceURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// DropDatabase removes the demo database (tests clean up with it).
func DropDatabase(ctx context.Context, cfg Config) error {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	server, err := serverURL(cfg.DatabaseURL, cfg.Getenv)
	if err != nil {
		return err
	}
	maintenance, err := withDatabase(server, "postgres")
	if err != nil {
		return err
	}
	conn, err := connect(ctx, maintenance)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{cfg.Database}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", cfg.Database, err)
	}
	return nil
}

func migrateAndSeed(ctx context.Context, dbURL string) error {
	src, err := migrate.Embedded()
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	conn, err := connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := migrate.New(conn, src, nil).Up(ctx); err != nil {
		return fmt.Errorf("migrate demo database: %w", err)
	}
	if _, err := conn.Exec(ctx, templates.Seed()); err != nil {
		return fmt.Errorf("seed demo database: %w", err)
	}
	return nil
}

// listen binds every relay's port now, so a busy port is reported before
// anything runs.
func (d *Demo) listen() error {
	for i := range d.cfg.Relays {
		port := 0
		if d.cfg.BasePort != 0 {
			port = d.cfg.BasePort + i
		}
		addr := net.JoinHostPort(d.cfg.Host, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			d.Close()
			return fmt.Errorf("listen on %s (choose other ports with --base-port): %w", addr, err)
		}
		d.listeners = append(d.listeners, ln)
	}
	return nil
}

func (d *Demo) issueLinks(ctx context.Context) error {
	conn, err := connect(ctx, d.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT u.id, u.name, u.user_type, o.name FROM public.users u JOIN public.orgs o ON o.id = u.org_id ORDER BY o.id, u.id`)
	if err != nil {
		return fmt.Errorf("list demo users: %w", err)
	}
	users, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		return u, r.Scan(&u.ID, &u.Name, &u.Type, &u.Org)
	})
	if err != nil {
		return fmt.Errorf("list demo users: %w", err)
	}
	for i := range users {
		u := &users[i]
		u.Relay = d.RelayURLs()[i%len(d.listeners)]
		if u.Token, err = auth.Issue([]byte(d.secret), u.ID, tokenTTL, time.Now()); err != nil {
			return err
		}
		u.URL = u.Relay + "/#access_token=" + u.Token
	}
	d.users = users
	return nil
}

// RelayURLs returns the relays' base URLs.
func (d *Demo) RelayURLs() []string {
	urls := make([]string, len(d.listeners))
	for i, ln := range d.listeners {
		urls[i] = "http://" + ln.Addr().String()
	}
	return urls
}

// Users returns the seeded users with their sign-in links.
func (d *Demo) Users() []User { return d.users }

// DatabaseURL returns the demo database's connection string.
func (d *Demo) DatabaseURL() string { return d.dbURL }

// Close releases the ports of a demo that will not Run.
func (d *Demo) Close() {
	for _, ln := range d.listeners {
		_ = ln.Close()
	}
}

// Run serves the relays and generates templates until ctx is done. It
// prints the links, then one line per generated template, to out.
func (d *Demo) Run(ctx context.Context, out io.Writer) error {
	servers := make([]*relay.Server, len(d.listeners))
	for i, ln := range d.listeners {
		cfg := relay.DefaultConfig()
		cfg.DatabaseURL = d.dbURL
		cfg.Addr = ln.Addr().String()
		cfg.JWTSecret = d.secret
		cfg.PoolSize = 4
		cfg.WriteAPI = true // the demo page creates templates
		srv, err := relay.New(ctx, cfg, d.log.With("relay", i+1))
		if err != nil {
			d.Close()
			return fmt.Errorf("start relay %d: %w", i+1, err)
		}
		servers[i] = srv
	}
	d.printLinks(out)
	g, gctx := errgroup.WithContext(ctx)
	for i, srv := range servers {
		g.Go(func() error { return srv.Run(gctx, d.listeners[i]) })
	}
	if !d.cfg.Quiet {
		g.Go(func() error { return d.produce(gctx, out) })
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	return err
}

func (d *Demo) printLinks(out io.Writer) {
	fmt.Fprintf(out, "pgrelay demo: database %s, %d relays: %s\n\n", d.cfg.Database, len(d.listeners), strings.Join(d.RelayURLs(), " "))
	fmt.Fprintf(out, "Open one link per user (each on a different relay):\n")
	for _, u := range d.users {
		fmt.Fprintf(out, "  %-5s %-4s %-6s %s\n", u.Name, u.Type, u.Org, u.URL)
	}
	if d.cfg.Quiet {
		fmt.Fprintf(out, "\nCreate templates in a page, or with SQL:\n  psql %q -c \"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('Q3 menu', '{loc-1}', 'zowi-1')\"\n", d.dbURL)
	} else {
		fmt.Fprintf(out, "\nA template is inserted every %s from a rotating user (--quiet to stop that). Ctrl-C stops.\n", d.cfg.Interval)
	}
}

func (d *Demo) produce(ctx context.Context, out io.Writer) error {
	conn, err := connect(ctx, d.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ticker := time.NewTicker(d.cfg.Interval)
	defer ticker.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
		if err := insert(ctx, conn, out, n); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
}

// insert creates the n-th generated template: a rotating creator shares a
// rotating name with a rotating set of its org's locations (sometimes none:
// then only the creator's ZOWI colleagues receive it).
func insert(ctx context.Context, conn *pgx.Conn, out io.Writer, n int) error {
	names := []string{"Weekly menu", "Opening hours", "Safety checklist", "Holiday rota", "Q3 pricing", "Welcome pack"}
	creators := []string{"zowi-1", "zolo-1", "zewi-1", "zelo-1", "zowi-2", "zowi-9"}
	sharesByOrg := map[string][][]string{"org-1": {{"loc-1"}, {"loc-2", "loc-3"}, {}, {"loc-3"}, {"loc-1", "loc-2"}}, "org-2": {{"loc-9"}, {}}}
	creator := creators[(n-1)%len(creators)]
	var org, who string
	if err := conn.QueryRow(ctx, `SELECT org_id, name FROM public.users WHERE id = $1`, creator).Scan(&org, &who); err != nil {
		return fmt.Errorf("look up demo creator %s: %w", creator, err)
	}
	shares := sharesByOrg[org]
	share := shares[(n-1)%len(shares)]
	name := fmt.Sprintf("%s #%d", names[(n-1)%len(names)], n)
	var recipients []string
	err := conn.QueryRow(ctx, `
WITH t AS (INSERT INTO public.templates (name, share_location_ids, created_by) VALUES ($1, $2, $3) RETURNING id)
SELECT coalesce(array_agg(u.name ORDER BY u.name), '{}')
  FROM relay.template_subscriptions s JOIN public.users u ON u.id = s.user_id
 WHERE s.key = ANY (SELECT 'location:' || unnest($2::text[]) UNION ALL SELECT 'org:' || $4)
   AND s.user_id <> $3`, name, share, creator, org).Scan(&recipients)
	if err != nil {
		return fmt.Errorf("insert demo template: %w", err)
	}
	with := "no location (ZOWI colleagues only)"
	if len(share) > 0 {
		with = strings.Join(share, ", ")
	}
	fmt.Fprintf(out, "%s  %s shared %q with %s → %s\n", time.Now().Format("15:04:05"), who, name, with, strings.Join(dedupe(recipients), ", "))
	return nil
}

func dedupe(sorted []string) []string {
	var out []string
	for i, s := range sorted {
		if i == 0 || sorted[i-1] != s {
			out = append(out, s)
		}
	}
	if out == nil {
		return []string{"nobody"}
	}
	return out
}
