// Package migrate applies pgrelay's versioned migrations and repeatable
// definitions to a database, and rolls them back.
//
// Versioned migrations (NNNN_name.up.sql / NNNN_name.down.sql) run once each,
// in order, one transaction per file. Repeatable definitions (any *.sql) are
// re-applied after the migrations whenever their content changes. Every
// operation holds a session advisory lock, so several instances may run at
// once. Bookkeeping lives in relay.schema_migrations and
// relay.schema_repeatables; rolling back the last migration drops the relay
// schema entirely, leaving the database as it was before the first `up`.
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/examples/templates"
	"github.com/pgrelay/pgrelay/migrations"
	"github.com/pgrelay/pgrelay/triggers"
)

// lockKey is the advisory lock every migrate operation holds: "pgrelay" in
// ASCII, so it is recognisable in pg_locks.
const lockKey int64 = 0x7067_7265_6c61_79

// ErrChecksumMismatch reports that an applied migration's file has changed
// since it was applied.
var ErrChecksumMismatch = errors.New("applied migration was modified")

// Migration is one versioned schema change.
type Migration struct {
	Version  int
	Name     string // file name without the .up.sql suffix, e.g. 0001_relay_core
	Up, Down string
	Checksum string
}

// Repeatable is one definition file re-applied whenever it changes.
type Repeatable struct {
	Name     string
	SQL      string
	Checksum string
}

// Source holds what a Migrator applies.
type Source struct {
	Migrations  []Migration
	Repeatables []Repeatable
}

var migrationFile = regexp.MustCompile(`^(\d+)_([A-Za-z0-9_]+)\.(up|down)\.sql$`)

// Load reads versioned migrations from migrations and repeatable definitions
// from repeatables. Every up file needs a down file and versions must be
// unique.
func Load(migrations, repeatables fs.FS) (Source, error) {
	var src Source
	byVersion := map[int]*Migration{}
	files, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		return src, fmt.Errorf("list migrations: %w", err)
	}
	for _, name := range files {
		m := migrationFile.FindStringSubmatch(name)
		if m == nil {
			return src, fmt.Errorf("migration file %s: name must look like 0001_name.up.sql or 0001_name.down.sql", name)
		}
		version, _ := strconv.Atoi(m[1])
		body, err := fs.ReadFile(migrations, name)
		if err != nil {
			return src, fmt.Errorf("read migration %s: %w", name, err)
		}
		base := m[1] + "_" + m[2]
		mig := byVersion[version]
		if mig == nil {
			mig = &Migration{Version: version, Name: base}
			byVersion[version] = mig
		} else if mig.Name != base {
			return src, fmt.Errorf("migration version %d is used by both %s and %s", version, mig.Name, base)
		}
		if m[3] == "up" {
			mig.Up = string(body)
		} else {
			mig.Down = string(body)
		}
	}
	for _, mig := range byVersion {
		if mig.Up == "" {
			return src, fmt.Errorf("migration %s has no .up.sql file", mig.Name)
		}
		if mig.Down == "" {
			return src, fmt.Errorf("migration %s has no .down.sql file", mig.Name)
		}
		mig.Checksum = checksum(mig.Up)
		src.Migrations = append(src.Migrations, *mig)
	}
	sort.Slice(src.Migrations, func(i, j int) bool { return src.Migrations[i].Version < src.Migrations[j].Version })

	if repeatables != nil {
		files, err := fs.Glob(repeatables, "*.sql")
		if err != nil {
			return src, fmt.Errorf("list repeatable definitions: %w", err)
		}
		sort.Strings(files)
		for _, name := range files {
			body, err := fs.ReadFile(repeatables, name)
			if err != nil {
				return src, fmt.Errorf("read repeatable definition %s: %w", name, err)
			}
			src.Repeatables = append(src.Repeatables, Repeatable{Name: path.Base(name), SQL: string(body), Checksum: checksum(string(body))})
		}
	}
	return src, nil
}

func checksum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Progress receives one line per step taken, for the command's output.
type Progress func(format string, args ...any)

// Migrator applies a Source to the database of one connection.
type Migrator struct {
	conn     *pgx.Conn
	src      Source
	progress Progress
}

// New returns a Migrator that works through conn. progress may be nil.
func New(conn *pgx.Conn, src Source, progress Progress) *Migrator {
	if progress == nil {
		progress = func(string, ...any) {}
	}
	return &Migrator{conn: conn, src: src, progress: progress}
}

const bookkeepingSQL = `
CREATE SCHEMA IF NOT EXISTS relay;
CREATE TABLE IF NOT EXISTS relay.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS relay.schema_repeatables (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);`

// withLock runs fn while holding the migration advisory lock.
func (m *Migrator) withLock(ctx context.Context, fn func() error) (err error) {
	if _, err := m.conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		// A fresh context: the lock must be released even when ctx is done.
		unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := m.conn.Exec(unlockCtx, "SELECT pg_advisory_unlock($1)", lockKey); uerr != nil && err == nil {
			err = fmt.Errorf("release migration lock: %w", uerr)
		}
	}()
	return fn()
}

type applied struct {
	name, checksum string
	at             time.Time
}

// appliedState reads the bookkeeping; a database never migrated has none.
func (m *Migrator) appliedState(ctx context.Context) (map[int]applied, map[string]string, error) {
	versions := map[int]applied{}
	repeatables := map[string]string{}
	var exists bool
	if err := m.conn.QueryRow(ctx, "SELECT to_regclass('relay.schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return nil, nil, fmt.Errorf("read migration bookkeeping: %w", err)
	}
	if !exists {
		return versions, repeatables, nil
	}
	rows, err := m.conn.Query(ctx, "SELECT version, name, checksum, applied_at FROM relay.schema_migrations")
	if err != nil {
		return nil, nil, fmt.Errorf("read applied migrations: %w", err)
	}
	for rows.Next() {
		var v int
		var a applied
		if err := rows.Scan(&v, &a.name, &a.checksum, &a.at); err != nil {
			return nil, nil, fmt.Errorf("read applied migrations: %w", err)
		}
		versions[v] = a
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read applied migrations: %w", err)
	}
	rows, err = m.conn.Query(ctx, "SELECT name, checksum FROM relay.schema_repeatables")
	if err != nil {
		return nil, nil, fmt.Errorf("read applied repeatable definitions: %w", err)
	}
	for rows.Next() {
		var name, sum string
		if err := rows.Scan(&name, &sum); err != nil {
			return nil, nil, fmt.Errorf("read applied repeatable definitions: %w", err)
		}
		repeatables[name] = sum
	}
	return versions, repeatables, rows.Err()
}

// Up applies every pending migration, then every repeatable definition whose
// content changed. It reports how many files it applied; zero means the
// database was already up to date.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	count := 0
	err := m.withLock(ctx, func() error {
		if _, err := m.conn.Exec(ctx, bookkeepingSQL); err != nil {
			return fmt.Errorf("create migration bookkeeping: %w", err)
		}
		versions, repeatables, err := m.appliedState(ctx)
		if err != nil {
			return err
		}
		for _, mig := range m.src.Migrations {
			if a, ok := versions[mig.Version]; ok {
				if a.checksum != mig.Checksum {
					return fmt.Errorf("%s.up.sql: %w since it was applied at %s; add a new migration instead",
						mig.Name, ErrChecksumMismatch, a.at.Format(time.RFC3339))
				}
				continue
			}
			err := m.inTx(ctx, mig.Name+".up.sql", mig.Up,
				"INSERT INTO relay.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
				mig.Version, mig.Name, mig.Checksum)
			if err != nil {
				return err
			}
			m.progress("applied %s", mig.Name)
			count++
		}
		for _, r := range m.src.Repeatables {
			if repeatables[r.Name] == r.Checksum {
				continue
			}
			err := m.inTx(ctx, r.Name, r.SQL,
				`INSERT INTO relay.schema_repeatables (name, checksum) VALUES ($1, $2)
				 ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()`,
				r.Name, r.Checksum)
			if err != nil {
				return err
			}
			m.progress("applied %s", r.Name)
			count++
		}
		return nil
	})
	return count, err
}

// Down rolls back the last n applied migrations, newest first. Repeatable
// definitions are marked for re-application, since the objects they define
// may depend on what was rolled back. Rolling back the last migration drops
// the relay schema.
func (m *Migrator) Down(ctx context.Context, n int) (int, error) {
	if n < 1 {
		return 0, fmt.Errorf("down: number of migrations must be at least 1, got %d", n)
	}
	count := 0
	err := m.withLock(ctx, func() error {
		versions, _, err := m.appliedState(ctx)
		if err != nil {
			return err
		}
		byVersion := map[int]Migration{}
		for _, mig := range m.src.Migrations {
			byVersion[mig.Version] = mig
		}
		var order []int
		for v := range versions {
			order = append(order, v)
		}
		sort.Sort(sort.Reverse(sort.IntSlice(order)))
		for _, v := range order {
			if count == n {
				break
			}
			mig, ok := byVersion[v]
			if !ok {
				return fmt.Errorf("down: migration version %d (%s) is applied but this build has no file for it", v, versions[v].name)
			}
			err := m.inTx(ctx, mig.Name+".down.sql", mig.Down+"\n;DELETE FROM relay.schema_repeatables;",
				"DELETE FROM relay.schema_migrations WHERE version = $1", mig.Version)
			if err != nil {
				return err
			}
			m.progress("rolled back %s", mig.Name)
			count++
		}
		if count == len(order) && count > 0 {
			if _, err := m.conn.Exec(ctx, "DROP SCHEMA IF EXISTS relay CASCADE"); err != nil {
				return fmt.Errorf("drop schema relay: %w", err)
			}
			m.progress("dropped schema relay: no migration is applied")
		}
		return nil
	})
	return count, err
}

// inTx runs body and a bookkeeping statement in one transaction, so a file is
// either applied and recorded or neither.
func (m *Migrator) inTx(ctx context.Context, file, body, record string, args ...any) error {
	tx, err := m.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", file, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit this is a no-op
	if _, err := tx.Exec(ctx, body); err != nil {
		return fmt.Errorf("%s: %s", file, describe(err))
	}
	if _, err := tx.Exec(ctx, record, args...); err != nil {
		return fmt.Errorf("%s: record: %w", file, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s: commit: %w", file, err)
	}
	return nil
}

// describe renders a server error on one line with its position, so a failed
// migration names what went wrong where.
func describe(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err.Error()
	}
	msg := pgErr.Message
	if pgErr.Detail != "" {
		msg += " (" + pgErr.Detail + ")"
	}
	if pgErr.Where != "" {
		msg += " at " + strings.ReplaceAll(pgErr.Where, "\n", " / ")
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", msg, pgErr.Code)
}

// StatusLine is one line of Status: a migration or a repeatable definition.
type StatusLine struct {
	Kind  string // "migration" or "repeatable"
	Name  string
	State string // applied, pending, modified (migrations); current, pending, changed (repeatables); missing (applied, no file)
	At    time.Time
}

// String renders the line as `migrate status` prints it: state, kind, name
// and, once applied, when.
func (l StatusLine) String() string {
	s := fmt.Sprintf("%-8s %-10s %s", l.State, l.Kind, l.Name)
	if !l.At.IsZero() {
		s += "  " + l.At.UTC().Format(time.RFC3339)
	}
	return s
}

// Status reports every migration and repeatable definition and whether it is
// applied.
func (m *Migrator) Status(ctx context.Context) ([]StatusLine, error) {
	versions, repeatables, err := m.appliedState(ctx)
	if err != nil {
		return nil, err
	}
	var lines []StatusLine
	known := map[int]bool{}
	for _, mig := range m.src.Migrations {
		known[mig.Version] = true
		line := StatusLine{Kind: "migration", Name: mig.Name, State: "pending"}
		if a, ok := versions[mig.Version]; ok {
			line.State, line.At = "applied", a.at
			if a.checksum != mig.Checksum {
				line.State = "modified"
			}
		}
		lines = append(lines, line)
	}
	for v, a := range versions {
		if !known[v] {
			lines = append(lines, StatusLine{Kind: "migration", Name: a.name, State: "missing", At: a.at})
		}
	}
	for _, r := range m.src.Repeatables {
		line := StatusLine{Kind: "repeatable", Name: r.Name, State: "pending"}
		if sum, ok := repeatables[r.Name]; ok {
			line.State = "current"
			if sum != r.Checksum {
				line.State = "changed"
			}
		}
		lines = append(lines, line)
	}
	return lines, nil
}

// Pending reports whether Up would apply anything.
func Pending(lines []StatusLine) bool {
	for _, l := range lines {
		if l.State != "applied" && l.State != "current" {
			return true
		}
	}
	return false
}

// Core returns the relay core's migrations and repeatable definitions, as
// built into the binary: all a database needs to serve topics of its own.
func Core() (Source, error) {
	return Load(migrations.FS, triggers.FS)
}

// Embedded returns the core and the example app (examples/templates), as
// `migrate up` installs them by default.
func Embedded() (Source, error) {
	core, err := Core()
	if err != nil {
		return Source{}, err
	}
	example, err := Load(templates.Migrations(), templates.Triggers())
	if err != nil {
		return Source{}, fmt.Errorf("example app: %w", err)
	}
	return Merge(core, example)
}

// Merge returns the migrations of both sources in one version order, and
// their repeatable definitions in file-name order. Versions and file names
// must be unique across both.
func Merge(a, b Source) (Source, error) {
	out := Source{
		Migrations:  append(slices.Clone(a.Migrations), b.Migrations...),
		Repeatables: append(slices.Clone(a.Repeatables), b.Repeatables...),
	}
	sort.Slice(out.Migrations, func(i, j int) bool { return out.Migrations[i].Version < out.Migrations[j].Version })
	sort.Slice(out.Repeatables, func(i, j int) bool { return out.Repeatables[i].Name < out.Repeatables[j].Name })
	for i := 1; i < len(out.Migrations); i++ {
		if prev, cur := out.Migrations[i-1], out.Migrations[i]; prev.Version == cur.Version {
			return Source{}, fmt.Errorf("migration version %d is used by both %s and %s", cur.Version, prev.Name, cur.Name)
		}
	}
	for i := 1; i < len(out.Repeatables); i++ {
		if out.Repeatables[i-1].Name == out.Repeatables[i].Name {
			return Source{}, fmt.Errorf("two repeatable definitions are named %s", out.Repeatables[i].Name)
		}
	}
	return out, nil
}

// Capture describes the database's capture mode (relay.set_capture) as
// `migrate status` prints it, or "" before migration 0008.
func (m *Migrator) Capture(ctx context.Context) (string, error) {
	var installed bool
	if err := m.conn.QueryRow(ctx, "SELECT to_regclass('relay.capture') IS NOT NULL").Scan(&installed); err != nil {
		return "", fmt.Errorf("look for the capture state: %w", err)
	}
	if !installed {
		return "", nil
	}
	var mode, requested, slot string
	var slotExists bool
	var retained *int64
	var lost *time.Time
	err := m.conn.QueryRow(ctx, `
SELECT c.mode, c.requested, coalesce(c.slot_name, ''), s.slot_name IS NOT NULL,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint, c.slot_lost_at
  FROM relay.capture c LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = c.slot_name`).
		Scan(&mode, &requested, &slot, &slotExists, &retained, &lost)
	if err != nil {
		return "", fmt.Errorf("read the capture state: %w", err)
	}
	line := fmt.Sprintf("%-8s %-10s", "capture", mode)
	switch {
	case slot != "" && slotExists && retained != nil:
		line += fmt.Sprintf(" replication slot %s, %d bytes of WAL retained", slot, *retained)
	case slot != "" && !slotExists:
		line += fmt.Sprintf(" replication slot %s is missing", slot)
	}
	if lost != nil {
		line += fmt.Sprintf(" (a replication slot was LOST at %s: rows committed just before are missing from the log, subscribers were sent a reset; any set_capture call acknowledges it)", lost.UTC().Format(time.RFC3339))
	}
	if requested != mode {
		line += fmt.Sprintf(" (%s requested: a relay's sequencer completes the switch)", requested)
	} else if mode == "trigger" && slot != "" && slotExists {
		line += " (draining: the sequencer drops the slot once it has appended everything up to the switch)"
	}
	return line, nil
}
