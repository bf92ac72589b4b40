package migrate_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgrelay/pgrelay/internal/migrate"
	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/migrations"
	"github.com/pgrelay/pgrelay/triggers"
)

func connect(t *testing.T, db *pgtest.DB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatalf("connect to %s: %v", db.Name, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func embedded(t *testing.T) migrate.Source {
	t.Helper()
	src, err := migrate.Embedded()
	if err != nil {
		t.Fatalf("load embedded SQL: %v", err)
	}
	return src
}

// runCLI runs the migrate command against db and returns its output.
func runCLI(t *testing.T, db *pgtest.DB, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"--database-url", db.URL}, args...)
	err := migrate.Run(context.Background(), args, func(string) string { return "" }, &stdout, &stderr)
	return stdout.String(), err
}

func mustRunCLI(t *testing.T, db *pgtest.DB, args ...string) string {
	t.Helper()
	out, err := runCLI(t, db, args...)
	if err != nil {
		t.Fatalf("migrate %s: %v\noutput:\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestUpTwiceIsANoOpTheSecondTime(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src := embedded(t)
	m := migrate.New(connect(t, db), src, nil)
	ctx := context.Background()

	first, err := m.Up(ctx)
	if err != nil {
		t.Fatalf("first up: %v", err)
	}
	if want := len(src.Migrations) + len(src.Repeatables); first != want {
		t.Errorf("first up applied %d files, want %d", first, want)
	}
	second, err := m.Up(ctx)
	if err != nil {
		t.Fatalf("second up: %v", err)
	}
	if second != 0 {
		t.Errorf("second up applied %d files, want 0", second)
	}
	out := mustRunCLI(t, db, "up")
	if want := "up to date: nothing to apply\n"; out != want {
		t.Errorf("output of a third up = %q, want %q", out, want)
	}
}

func TestConcurrentUpsOnAnEmptyDatabaseAllSucceedAndApplyEachFileOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src := embedded(t)
	const instances = 4
	applied := make([]int, instances)
	var g errgroup.Group
	for i := range instances {
		conn := connect(t, db)
		g.Go(func() error {
			n, err := migrate.New(conn, src, nil).Up(context.Background())
			applied[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent up failed: %v", err)
	}
	total := 0
	for _, n := range applied {
		total += n
	}
	if want := len(src.Migrations) + len(src.Repeatables); total != want {
		t.Errorf("the %d instances applied %v files, %d in all; want %d in all (each file once)", instances, applied, total, want)
	}

	rows, _ := db.Pool.Query(context.Background(), "SELECT version FROM relay.schema_migrations ORDER BY version")
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatalf("read recorded migrations: %v", err)
	}
	var want []int
	for _, m := range src.Migrations {
		want = append(want, m.Version)
	}
	if !slices.Equal(versions, want) {
		t.Errorf("recorded versions = %v, want %v", versions, want)
	}
}

func TestStatusAfterUpShowsNothingPending(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src := embedded(t)
	m := migrate.New(connect(t, db), src, nil)
	ctx := context.Background()

	before, err := m.Status(ctx)
	if err != nil {
		t.Fatalf("status before up: %v", err)
	}
	if !migrate.Pending(before) {
		t.Errorf("status of an empty database reports nothing pending: %v", before)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("up: %v", err)
	}
	after, err := m.Status(ctx)
	if err != nil {
		t.Fatalf("status after up: %v", err)
	}
	if migrate.Pending(after) {
		t.Errorf("status after up reports something pending: %v", after)
	}
	if got, want := len(after), len(src.Migrations)+len(src.Repeatables); got != want {
		t.Errorf("status has %d lines, want %d (one per file)", got, want)
	}

	out := mustRunCLI(t, db, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// One line per file, then the capture mode.
	if len(lines) != len(after)+1 {
		t.Errorf("status printed %d lines, want %d:\n%s", len(lines), len(after)+1, out)
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "capture  trigger") {
		t.Errorf("status ends with %q, want the capture mode (trigger, the default)", last)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "applied ") && !strings.HasPrefix(l, "current ") {
			t.Errorf("status line %q: want it to start with applied or current", l)
		}
	}
}

// catalog lists every user-visible object in a database: schemas, relations
// (tables, views, indexes, sequences), functions and non-internal triggers,
// each as "kind schema.name".
func catalog(t *testing.T, db *pgtest.DB) []string {
	t.Helper()
	rows, _ := db.Pool.Query(context.Background(), `
SELECT 'schema ' || nspname FROM pg_namespace
 WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'trigger ' || n.nspname || '.' || c.relname || '.' || tg.tgname FROM pg_trigger tg
  JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT tg.tgisinternal
UNION ALL
SELECT 'type ' || n.nspname || '.' || ty.typname FROM pg_type ty JOIN pg_namespace n ON n.oid = ty.typnamespace
 WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
ORDER BY 1`)
	objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read catalog: %v", err)
	}
	return objects
}

func TestDownToZeroLeavesTheDatabaseAsItWasBeforeUp(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	before := catalog(t, db)

	mustRunCLI(t, db, "up")
	installed := catalog(t, db)
	for _, want := range []string{"schema relay", "relation public.templates", "function relay.create_topic", "trigger public.templates.pgrelay_templates"} {
		if !slices.Contains(installed, want) {
			t.Fatalf("after up, %q is missing from the catalog; the check below would prove nothing", want)
		}
	}

	out := mustRunCLI(t, db, "down", "99")
	if !strings.Contains(out, "dropped schema relay") {
		t.Errorf("down 99 output does not mention dropping schema relay:\n%s", out)
	}
	after := catalog(t, db)
	if !slices.Equal(after, before) {
		t.Errorf("after down 99 the catalog differs from before up\nleft behind: %v\nremoved: %v",
			difference(after, before), difference(before, after))
	}
	var appTables int
	if err := db.Pool.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_class WHERE relname IN ('orgs', 'locations', 'users', 'templates')").Scan(&appTables); err != nil {
		t.Fatal(err)
	}
	if appTables != 0 {
		t.Errorf("after down 99, %d of the app tables still exist, want 0", appTables)
	}
}

func difference(a, b []string) []string {
	var d []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			d = append(d, s)
		}
	}
	return d
}

func TestUpAfterFullDownInstallsEverythingAgain(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src := embedded(t)
	m := migrate.New(connect(t, db), src, nil)
	ctx := context.Background()
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("first up: %v", err)
	}
	down, err := m.Down(ctx, 99)
	if err != nil {
		t.Fatalf("down 99: %v", err)
	}
	if down != len(src.Migrations) {
		t.Errorf("down 99 rolled back %d migrations, want %d", down, len(src.Migrations))
	}
	again, err := m.Up(ctx)
	if err != nil {
		t.Fatalf("up after down: %v", err)
	}
	if want := len(src.Migrations) + len(src.Repeatables); again != want {
		t.Errorf("up after down applied %d files, want %d", again, want)
	}
	// The reinstalled write path works end to end: an insert becomes an event.
	db.Exec(t, `INSERT INTO orgs VALUES ('o', 'O'); INSERT INTO locations VALUES ('l', 'o', 'L');
	            INSERT INTO users (id, name, user_type, org_id) VALUES ('u', 'U', 'ZOWI', 'o');`)
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{l}', 'u')`)
	var events int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM relay.events WHERE topic = 'templates'").Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != 1 {
		t.Errorf("events after one insert = %d, want 1", events)
	}
}

func TestDownRollsBackOneMigrationByDefault(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src := embedded(t)
	mustRunCLI(t, db, "up")
	out := mustRunCLI(t, db, "down")
	last := src.Migrations[len(src.Migrations)-1].Name
	if want := "rolled back " + last + "\n"; out != want {
		t.Errorf("down output = %q, want %q", out, want)
	}
	lines, err := migrate.New(connect(t, db), src, nil).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		wantState := "applied"
		switch {
		case l.Kind == "repeatable":
			wantState = "pending" // re-applied by the next up: what they define may be gone
		case l.Name == last:
			wantState = "pending"
		}
		if l.State != wantState {
			t.Errorf("after down: %s %s is %s, want %s", l.Kind, l.Name, l.State, wantState)
		}
	}
}

// withFile returns a copy of fsys with name set to body.
func withFile(t *testing.T, fsys fs.FS, name, body string) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		out[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	out[name] = &fstest.MapFile{Data: []byte(body)}
	return out
}

func TestAModifiedAppliedMigrationIsRefused(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	conn := connect(t, db)
	ctx := context.Background()
	if _, err := migrate.New(conn, embedded(t), nil).Up(ctx); err != nil {
		t.Fatalf("up: %v", err)
	}
	original, err := fs.ReadFile(migrations.FS, "0001_relay_core.up.sql")
	if err != nil {
		t.Fatal(err)
	}
	edited, err := migrate.Load(withFile(t, migrations.FS, "0001_relay_core.up.sql", string(original)+"\n-- edited after release\n"), triggers.FS)
	if err != nil {
		t.Fatal(err)
	}

	_, err = migrate.New(conn, edited, nil).Up(ctx)
	if !errors.Is(err, migrate.ErrChecksumMismatch) {
		t.Fatalf("up with an edited applied migration: err = %v, want ErrChecksumMismatch", err)
	}
	if !strings.Contains(err.Error(), "0001_relay_core.up.sql") {
		t.Errorf("error %q does not name the edited file", err)
	}
	lines, err := migrate.New(conn, edited, nil).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lines[0].Name != "0001_relay_core" || lines[0].State != "modified" {
		t.Errorf("status line for the edited migration = %v, want state modified", lines[0])
	}
}

func TestAFailingMigrationNamesTheFileAndServerErrorAndRecordsNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	src, err := migrate.Load(fstest.MapFS{
		"0001_good.up.sql":   {Data: []byte("CREATE TABLE public.good (id int);")},
		"0001_good.down.sql": {Data: []byte("DROP TABLE public.good;")},
		// The first statement succeeds, so a missing transaction would leave
		// public.half behind.
		"0002_bad.up.sql":   {Data: []byte("CREATE TABLE public.half (id int);\nSELECT no_such_column FROM public.good;")},
		"0002_bad.down.sql": {Data: []byte("DROP TABLE public.half;")},
	}, nil)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	n, err := migrate.New(connect(t, db), src, nil).Up(context.Background())
	if err == nil {
		t.Fatal("up with a bad migration succeeded, want an error")
	}
	for _, want := range []string{"0002_bad.up.sql", `column "no_such_column" does not exist`, "SQLSTATE 42703"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if n != 1 {
		t.Errorf("up reported %d files applied, want 1 (0001 only)", n)
	}

	rows, _ := db.Pool.Query(context.Background(), "SELECT version FROM relay.schema_migrations ORDER BY version")
	recorded, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(recorded, []int{1}) {
		t.Errorf("recorded versions = %v, want [1]: the failed migration must not be recorded", recorded)
	}
	var half bool
	if err := db.Pool.QueryRow(context.Background(), "SELECT to_regclass('public.half') IS NOT NULL").Scan(&half); err != nil {
		t.Fatal(err)
	}
	if half {
		t.Error("public.half exists: the failed migration's first statement was not rolled back")
	}
}

func TestLoadRejectsInconsistentMigrationSets(t *testing.T) {
	t.Parallel()
	sql := &fstest.MapFile{Data: []byte("SELECT 1;")}
	tests := []struct {
		name  string
		files fstest.MapFS
		want  string
	}{
		{"up without down", fstest.MapFS{"0001_a.up.sql": sql}, "0001_a has no .down.sql file"},
		{"down without up", fstest.MapFS{"0001_a.down.sql": sql}, "0001_a has no .up.sql file"},
		{"badly named file", fstest.MapFS{"first.sql": sql}, "first.sql: name must look like"},
		{"version used twice", fstest.MapFS{
			"0001_a.up.sql": sql, "0001_a.down.sql": sql, "0001_b.up.sql": sql, "0001_b.down.sql": sql,
		}, "version 1 is used by both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := migrate.Load(tt.files, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load: err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestUpWithoutTheExampleInstallsTheCoreAloneAndTheExampleCanFollow(t *testing.T) {
	t.Parallel()
	db := pgtest.Empty(t)
	before := catalog(t, db)

	out := mustRunCLI(t, db, "up", "--no-example")
	if strings.Contains(out, "template") {
		t.Errorf("up --no-example applied the example's files:\n%s", out)
	}
	core := catalog(t, db)
	if !slices.Contains(core, "function relay.create_topic") {
		t.Fatalf("after up --no-example, relay.create_topic is missing; the core is not installed:\n%v", core)
	}
	for _, obj := range difference(core, before) {
		if !strings.HasPrefix(obj, "schema relay") && !strings.Contains(obj, " relay.") {
			t.Errorf("up --no-example created %q outside schema relay", obj)
		}
	}
	status := mustRunCLI(t, db, "status", "--no-example")
	if strings.Contains(status, "pending") {
		t.Errorf("status --no-example after up --no-example shows pending work:\n%s", status)
	}
	if status := mustRunCLI(t, db, "status"); !strings.Contains(status, "pending  migration  0002_template_sharing") {
		t.Errorf("status without --no-example does not show the example as pending:\n%s", status)
	}

	// Adding the example later installs it among the core's migrations.
	mustRunCLI(t, db, "up")
	if installed := catalog(t, db); !slices.Contains(installed, "trigger public.templates.pgrelay_templates") {
		t.Fatal("up after up --no-example did not install the example's topic")
	}
	mustRunCLI(t, db, "down", "99")
	if after := catalog(t, db); !slices.Equal(after, before) {
		t.Errorf("after down 99 the catalog differs from before up\nleft behind: %v", difference(after, before))
	}
}

func TestMergeRefusesAVersionUsedByTheCoreAndTheExample(t *testing.T) {
	a := migrate.Source{Migrations: []migrate.Migration{{Version: 4, Name: "0004_trust"}}}
	b := migrate.Source{Migrations: []migrate.Migration{{Version: 4, Name: "0004_templates"}}}
	if _, err := migrate.Merge(a, b); err == nil || !strings.Contains(err.Error(), "version 4") {
		t.Fatalf("Merge = %v, want an error naming version 4", err)
	}
}
