package templates_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestHostileWritesFailWithAClearBoundedError adds to
// TestInvalidWritesFailWithAClearError what a careless or hostile producer
// may send: duplicate ids, huge share lists, lists full of unknown ids. Each
// fails with a clear error of bounded size, and nothing reaches the log.
func TestHostileWritesFailWithAClearBoundedError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		sql        string
		code       string
		constraint string
		message    string
	}{
		{"duplicate template id",
			"INSERT INTO templates (id, name, created_by) VALUES ('dup', 't', 'zolo-a1'), ('dup', 't', 'zolo-a1')",
			"23505", "templates_pkey", ""},
		{"duplicate user id",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('zewi-a', 'Again', 'ZEWI', 'org-a')",
			"23505", "users_pkey", ""},
		{"duplicate location id, even in another org",
			"INSERT INTO locations (id, org_id, name) VALUES ('a1', 'org-b', 'Stolen')",
			"23505", "locations_pkey", ""},
		{"user type in lower case",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', 'zewi', 'org-a')",
			"23514", "users_user_type_check", ""},
		{"user type NULL",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', NULL, 'org-a')",
			"23502", "", "user_type"},
		{"ZEWI at a location of another org",
			"INSERT INTO users (id, name, user_type, org_id, location_id) VALUES ('x', 'X', 'ZEWI', 'org-a', 'b1')",
			"23503", "users_location_in_own_org", ""},
		{"user in an unknown org",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', 'ZEWI', 'org-nope')",
			"23503", "users_org_id_fkey", ""},
		{"share list of 1001 existing ids",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', array_fill('a1'::text, ARRAY[1001]), 'zolo-a1')",
			"23514", "templates_share_location_ids_limit", "at most 1000"},
		{"share list of 100000 unknown ids",
			"INSERT INTO templates (name, share_location_ids, created_by) SELECT 't', array_agg('nope-' || i), 'zolo-a1' FROM generate_series(1, 100000) i",
			"23514", "templates_share_location_ids_limit", "has 100000 entries"},
		{"share list of 1000 unknown ids",
			"INSERT INTO templates (name, share_location_ids, created_by) SELECT 't', array_agg('nope-' || lpad(i::text, 4, '0')), 'zolo-a1' FROM generate_series(1, 1000) i",
			"23503", "", "nope-0001, nope-0002, nope-0003, nope-0004, nope-0005, nope-0006, nope-0007, nope-0008, nope-0009, nope-0010 and 990 more"},
		{"share list with an empty-string id",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a1,\"\"}', 'zolo-a1')",
			"23503", "", "unknown location id(s)"},
		{"template name NULL",
			"INSERT INTO templates (name, created_by) VALUES (NULL, 'zolo-a1')",
			"23502", "", "name"},
		{"share list NULL",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', NULL, 'zolo-a1')",
			"23502", "", "share_location_ids"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := newWorld(t)
			var before int
			if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM relay.events").Scan(&before); err != nil {
				t.Fatal(err)
			}
			_, err := db.Pool.Exec(context.Background(), tt.sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("err = %v, want a server error %s", err, tt.code)
			}
			if pgErr.Code != tt.code {
				t.Errorf("SQLSTATE = %s (%.300s), want %s", pgErr.Code, pgErr.Message, tt.code)
			}
			if pgErr.ConstraintName != tt.constraint {
				t.Errorf("constraint = %q, want %q", pgErr.ConstraintName, tt.constraint)
			}
			if !strings.Contains(pgErr.Message+" "+pgErr.Detail, tt.message) {
				t.Errorf("message = %.300q, want it to contain %q", pgErr.Message, tt.message)
			}
			if n := len(pgErr.Message) + len(pgErr.Detail); n > 1000 {
				t.Errorf("error of %d bytes: an error must stay readable whatever the input size", n)
			}
			var after int
			if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM relay.events").Scan(&after); err != nil {
				t.Fatal(err)
			}
			if after != before {
				t.Errorf("the failed write left %d events in the log", after-before)
			}
		})
	}
}
