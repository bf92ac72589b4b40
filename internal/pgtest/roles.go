package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
)

// Roles are the logins of a real deployment on a test's database, made by
// running docs/roles.sql (and, where the example app is installed,
// examples/templates/roles.sql) as the owner, so attack tests use exactly
// the privileges the documentation gives. Role names are unique to the test
// (roles belong to the whole server) and dropped when it ends.
type Roles struct {
	// Relay is the relay's role; RelayURL logs in as it.
	Relay, RelayURL string
	// Producer inserts into the app's tables and has nothing in schema
	// relay; ProducerURL logs in as it.
	Producer, ProducerURL string
	// Login is an unrelated login with PostgreSQL's default privileges and
	// CONNECT on the database; LoginURL logs in as it.
	Login, LoginURL string
}

// roleName matches the role names docs/roles.sql uses.
var roleName = regexp.MustCompile(`\b(pgrelay_relay|app_producer)\b`)

// WithRoles creates the deployment's roles on db (a migrated database).
func WithRoles(t testing.TB, db *DB) Roles {
	t.Helper()
	ctx := context.Background()
	var example bool
	if err := db.Pool.QueryRow(ctx, "SELECT to_regclass('public.templates') IS NOT NULL").Scan(&example); err != nil {
		t.Fatal(err)
	}
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..")
	scripts := []string{filepath.Join(root, "docs", "roles.sql")}
	if example {
		scripts = append(scripts, filepath.Join(root, "examples", "templates", "roles.sql"))
	}
	var sql []string
	suffix := randomSuffix()
	rename := func(name string) string { return name + "_" + suffix }
	for _, path := range scripts {
		script, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		sql = append(sql, roleName.ReplaceAllStringFunc(string(script), rename))
	}
	cfg, err := AdminConfig()
	if err != nil {
		t.Fatal(err)
	}
	r := Roles{Relay: rename("pgrelay_relay"), Producer: rename("app_producer"), Login: rename("app_login")}
	r.RelayURL = urlAs(cfg.Host, cfg.Port, r.Relay, db.Name)
	r.ProducerURL = urlAs(cfg.Host, cfg.Port, r.Producer, db.Name)
	r.LoginURL = urlAs(cfg.Host, cfg.Port, r.Login, db.Name)

	// Dropped before the database (cleanups run last first): what a role
	// was granted there goes with DROP OWNED.
	t.Cleanup(func() {
		for _, role := range []string{r.Relay, r.Producer, r.Login} {
			var exists bool
			if err := db.Pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil || !exists {
				continue
			}
			_, _ = db.Pool.Exec(ctx, fmt.Sprintf(
				"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'", role))
			if _, err := db.Pool.Exec(ctx, fmt.Sprintf("DROP OWNED BY %s", role)); err != nil {
				t.Errorf("drop privileges of role %s: %v", role, err)
			}
			if _, err := db.Pool.Exec(ctx, fmt.Sprintf("DROP ROLE %s", role)); err != nil {
				t.Errorf("drop role %s: %v", role, err)
			}
		}
	})
	for i, script := range sql {
		if _, err := db.Pool.Exec(ctx, script); err != nil {
			t.Fatalf("run %s: %v", scripts[i], err)
		}
	}
	// An unrelated login that may still connect (a reporting role, say):
	// the attacks must fail even for a session that got this far.
	if _, err := db.Pool.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN; GRANT CONNECT ON DATABASE %s TO %s",
		r.Login, db.Name, r.Login)); err != nil {
		t.Fatalf("create an unrelated login: %v", err)
	}
	return r
}

func urlAs(host string, port uint16, user, dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s", quote(host), port, quote(user), quote(dbname))
}
