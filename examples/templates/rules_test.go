package templates_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/workload"
)

var everyone = []string{"zowi-a", "zowi-a2", "zewi-a", "zolo-a1", "zelo-a2", "zolo-a3", "zowi-b", "zewi-b", "zolo-b1", "zelo-b2"}

func newWorld(t *testing.T) *pgtest.DB {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, workload.World)
	return db
}

func queryStrings(t *testing.T, db *pgtest.DB, sql string, args ...any) []string {
	t.Helper()
	rows, _ := db.Pool.Query(context.Background(), sql, args...)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	slices.Sort(got)
	if got == nil {
		got = []string{}
	}
	return got
}

// insertTemplate inserts a template and returns its id.
func insertTemplate(t *testing.T, db *pgtest.DB, creator string, shares []string) string {
	t.Helper()
	if shares == nil {
		shares = []string{} // a nil slice would be NULL, not an empty list
	}
	var id string
	err := db.Pool.QueryRow(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', $1, $2) RETURNING id`,
		shares, creator).Scan(&id)
	if err != nil {
		t.Fatalf("insert template by %s shared with %v: %v", creator, shares, err)
	}
	return id
}

// recipientsBySQLRule is relay.template_recipients: the rule written as a
// query over the data.
func recipientsBySQLRule(t *testing.T, db *pgtest.DB, templateID string) []string {
	t.Helper()
	return queryStrings(t, db, "SELECT relay.template_recipients($1)", templateID)
}

// recipientsByFilters is what the relay computes: the subscribers whose
// filter keys (relay.filters) meet the event's audience, minus its actor.
func recipientsByFilters(t *testing.T, db *pgtest.DB, templateID string) []string {
	t.Helper()
	return queryStrings(t, db, `
SELECT DISTINCT f.subscriber
  FROM relay.events e, relay.filters($2) f
 WHERE e.topic = 'templates' AND e.payload->>'id' = $1
   AND f.topic = e.topic AND f.key = ANY (e.audience)
   AND f.subscriber IS DISTINCT FROM e.actor`, templateID, everyone)
}

func assertRecipients(t *testing.T, db *pgtest.DB, templateID string, want []string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	if want == nil {
		want = []string{}
	}
	if got := recipientsBySQLRule(t, db, templateID); !slices.Equal(got, want) {
		t.Errorf("relay.template_recipients = %v, want %v", got, want)
	}
	if got := recipientsByFilters(t, db, templateID); !slices.Equal(got, want) {
		t.Errorf("recipients by relay.filters and the event's audience = %v, want %v", got, want)
	}
}

func TestTemplateRecipientsFollowTheSharingRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		creator string
		shares  []string
		want    []string
	}{
		{"ZOLO's template reaches that location's users, org-wide users and own-org ZOWIs",
			"zolo-a1", []string{"a1"}, []string{"zowi-a", "zowi-a2", "zewi-a"}},
		{"ZEWI's template reaches the ZELO of the shared location",
			"zewi-a", []string{"a2"}, []string{"zowi-a", "zowi-a2", "zelo-a2"}},
		{"ZOWI creator never receives its own template",
			"zowi-a", []string{"a1", "a3"}, []string{"zowi-a2", "zewi-a", "zolo-a1", "zolo-a3"}},
		{"empty share list reaches only the creator org's ZOWIs, minus the creator",
			"zowi-a", nil, []string{"zowi-a2"}},
		{"empty share list from a non-ZOWI reaches every ZOWI of its org",
			"zelo-a2", nil, []string{"zowi-a", "zowi-a2"}},
		{"empty share list from an org's only ZOWI reaches nobody",
			"zowi-b", nil, nil},
		{"duplicates in the share list count once",
			"zelo-a2", []string{"a1", "a1", "a1"}, []string{"zowi-a", "zowi-a2", "zewi-a", "zolo-a1"}},
		{"ZELO sharing with its own location does not receive it",
			"zelo-b2", []string{"b2"}, []string{"zowi-b", "zewi-b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := newWorld(t)
			id := insertTemplate(t, db, tt.creator, tt.shares)
			assertRecipients(t, db, id, tt.want)
		})
	}
}

func TestEachUserTypeSubscribesToTheKeysOfItsRule(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	tests := []struct {
		user string
		want []string
	}{
		{"zolo-a1", []string{"location:a1"}},
		{"zelo-a2", []string{"location:a2"}},
		{"zewi-a", []string{"location:a1", "location:a2", "location:a3"}},
		{"zowi-a", []string{"location:a1", "location:a2", "location:a3", "org:org-a"}},
		{"zewi-b", []string{"location:b1", "location:b2"}},
	}
	for _, tt := range tests {
		got := queryStrings(t, db, "SELECT key FROM relay.filters(ARRAY[$1]) WHERE topic = 'templates'", tt.user)
		if !slices.Equal(got, tt.want) {
			t.Errorf("keys of %s = %v, want %v", tt.user, got, tt.want)
		}
		view := queryStrings(t, db, "SELECT key FROM relay.template_subscriptions WHERE user_id = $1", tt.user)
		if !slices.Equal(view, tt.want) {
			t.Errorf("relay.template_subscriptions rows of %s = %v, want %v", tt.user, view, tt.want)
		}
	}
}

func TestFiltersReturnAnExistenceRowOnlyForExistingUsers(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	got := queryStrings(t, db, `
SELECT subscriber || ' ' || coalesce(topic, '-') || ' ' || coalesce(key, '-')
  FROM relay.filters(ARRAY['zolo-a1', 'ghost', 'zelo-b2'])`)
	want := []string{"zelo-b2 - -", "zelo-b2 templates location:b2", "zolo-a1 - -", "zolo-a1 templates location:a1"}
	if !slices.Equal(got, want) {
		t.Errorf("relay.filters rows = %v, want %v (nothing for ghost)", got, want)
	}
}

func TestRecipientsFollowUserChangesImmediately(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change string
		shares []string
		want   []string
	}{
		{"ZELO moved to the shared location starts receiving",
			"UPDATE users SET location_id = 'a1' WHERE id = 'zelo-a2'", []string{"a1"},
			[]string{"zowi-a", "zowi-a2", "zewi-a", "zolo-a1", "zelo-a2"}},
		{"ZOLO moved away stops receiving",
			"UPDATE users SET location_id = 'a3' WHERE id = 'zolo-a1'", []string{"a1"},
			[]string{"zowi-a", "zowi-a2", "zewi-a"}},
		{"ZOLO promoted to ZEWI receives every location of its org",
			"UPDATE users SET user_type = 'ZEWI' WHERE id = 'zolo-a1'", []string{"a2"},
			[]string{"zowi-a", "zowi-a2", "zewi-a", "zolo-a1", "zelo-a2"}},
		{"ZEWI demoted to ZOLO receives only its location",
			"UPDATE users SET user_type = 'ZOLO', location_id = 'a3' WHERE id = 'zewi-a'", []string{"a1"},
			[]string{"zowi-a", "zowi-a2", "zolo-a1"}},
		{"ZOWI demoted to ZEWI no longer receives unshared templates of its org",
			"UPDATE users SET user_type = 'ZEWI' WHERE id = 'zowi-a2'", nil,
			[]string{"zowi-a"}},
		{"user moved to another org stops receiving its old org's templates",
			"UPDATE users SET org_id = 'org-b', location_id = 'b1' WHERE id = 'zolo-a1'", []string{"a1"},
			[]string{"zowi-a", "zowi-a2", "zewi-a"}},
		{"deleted user receives nothing",
			"DELETE FROM users WHERE id = 'zewi-a'", []string{"a1"},
			[]string{"zowi-a", "zowi-a2", "zolo-a1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := newWorld(t)
			// The template exists before the change: who receives it is
			// computed from the users as they are now, not as they were.
			id := insertTemplate(t, db, "zolo-a3", tt.shares)
			db.Exec(t, tt.change)
			assertRecipients(t, db, id, tt.want)
		})
	}
}

func TestOrgWideKeysFollowLocationsAddedAndMoved(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	keysOf := func(user string) []string {
		return queryStrings(t, db, "SELECT key FROM relay.filters(ARRAY[$1]) WHERE topic = 'templates'", user)
	}
	has := func(user, key string) bool { return slices.Contains(keysOf(user), key) }

	db.Exec(t, "INSERT INTO locations (id, org_id, name) VALUES ('a4', 'org-a', 'A four')")
	for _, c := range []struct {
		user string
		want bool
	}{{"zewi-a", true}, {"zowi-a", true}, {"zolo-a1", false}, {"zewi-b", false}} {
		if got := has(c.user, "location:a4"); got != c.want {
			t.Errorf("after adding a4 to org A: %s has location:a4 = %v, want %v (keys %v)", c.user, got, c.want, keysOf(c.user))
		}
	}

	db.Exec(t, "UPDATE locations SET org_id = 'org-b' WHERE id = 'a4'")
	for _, c := range []struct {
		user string
		want bool
	}{{"zewi-a", false}, {"zowi-a", false}, {"zewi-b", true}, {"zowi-b", true}} {
		if got := has(c.user, "location:a4"); got != c.want {
			t.Errorf("after moving a4 to org B: %s has location:a4 = %v, want %v (keys %v)", c.user, got, c.want, keysOf(c.user))
		}
	}
}

func TestInvalidWritesFailWithAClearError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		sql        string
		code       string
		constraint string
		message    string
	}{
		{"template shared with unknown locations",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a1,nope-2,nope-1,nope-2}', 'zolo-a1')",
			"23503", "", "unknown location id(s) in share_location_ids: nope-1, nope-2"},
		{"template shared with a location of another org",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{b1}', 'zolo-a1')",
			"23503", "", "unknown location id(s) in share_location_ids: b1"},
		{"template shared with locations of both orgs",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a2,b2}', 'zewi-b')",
			"23503", "", "unknown location id(s) in share_location_ids: a2"},
		{"template moved to a creator of another org",
			"INSERT INTO templates (id, name, share_location_ids, created_by) VALUES ('moved', 't', '{a1}', 'zolo-a1'); UPDATE templates SET created_by = 'zolo-b1' WHERE id = 'moved'",
			"23503", "", "unknown location id(s) in share_location_ids: a1"},
		{"template shared with NULL",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a1,NULL}', 'zolo-a1')",
			"23502", "", "contains NULL"},
		{"template shared with more than 1000 locations",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', array_fill('a1'::text, ARRAY[1001]), 'zolo-a1')",
			"23514", "templates_share_location_ids_limit", ""},
		{"template by an unknown user",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a1}', 'ghost')",
			"23503", "templates_created_by_fkey", ""},
		{"user of an invalid type",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', 'ADMIN', 'org-a')",
			"23514", "users_user_type_check", ""},
		{"ZOLO without a location",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', 'ZOLO', 'org-a')",
			"23514", "users_location_required", ""},
		{"ZELO without a location",
			"INSERT INTO users (id, name, user_type, org_id) VALUES ('x', 'X', 'ZELO', 'org-a')",
			"23514", "users_location_required", ""},
		{"user at a location of another org",
			"INSERT INTO users (id, name, user_type, org_id, location_id) VALUES ('x', 'X', 'ZOLO', 'org-a', 'b1')",
			"23503", "users_location_in_own_org", ""},
		{"location with templates in the log moved to another org",
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{a1}', 'zowi-a'); UPDATE users SET location_id = NULL, user_type = 'ZEWI' WHERE location_id = 'a1'; UPDATE locations SET org_id = 'org-b' WHERE id = 'a1'",
			"23514", "locations_history_stays_in_org", "cannot move from org org-a to org org-b"},
		{"user moved to a location of another org",
			"UPDATE users SET location_id = 'b1' WHERE id = 'zolo-a1'",
			"23503", "users_location_in_own_org", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := newWorld(t)
			_, err := db.Pool.Exec(context.Background(), tt.sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("%s: err = %v, want a server error %s", tt.sql, err, tt.code)
			}
			if pgErr.Code != tt.code {
				t.Errorf("SQLSTATE = %s (%s), want %s", pgErr.Code, pgErr.Message, tt.code)
			}
			if pgErr.ConstraintName != tt.constraint {
				t.Errorf("constraint = %q, want %q", pgErr.ConstraintName, tt.constraint)
			}
			if !strings.Contains(pgErr.Message, tt.message) {
				t.Errorf("message = %q, want it to contain %q", pgErr.Message, tt.message)
			}
			var events, templates int
			if err := db.Pool.QueryRow(context.Background(),
				"SELECT (SELECT count(*) FROM relay.events), (SELECT count(*) FROM templates)").Scan(&events, &templates); err != nil {
				t.Fatal(err)
			}
			if events != 0 || templates != 0 {
				t.Errorf("after the failed write: %d events and %d templates, want none", events, templates)
			}
		})
	}
}

// filterChange is the JSON of a pgrelay_filters notification.
type filterChange struct {
	Subscribers []string `json:"subscribers"`
	All         bool     `json:"all"`
}

func TestFilterChangesAreAnnouncedOnPgrelayFilters(t *testing.T) {
	t.Parallel()
	orgA := []string{"zewi-a", "zelo-a2", "zolo-a1", "zolo-a3", "zowi-a", "zowi-a2"}
	orgB := []string{"zewi-b", "zelo-b2", "zolo-b1", "zowi-b"}
	tests := []struct {
		name   string
		change string
		want   filterChange
	}{
		{"user updated", "UPDATE users SET location_id = 'a2' WHERE id = 'zolo-a1'",
			filterChange{Subscribers: []string{"zolo-a1"}}},
		{"several users updated in one statement", "UPDATE users SET name = name || '!' WHERE location_id IS NOT NULL AND org_id = 'org-b'",
			filterChange{Subscribers: []string{"zelo-b2", "zolo-b1"}}},
		{"user inserted", "INSERT INTO users (id, name, user_type, org_id) VALUES ('new', 'New', 'ZEWI', 'org-b')",
			filterChange{Subscribers: []string{"new"}}},
		{"user deleted", "DELETE FROM users WHERE id = 'zelo-a2'",
			filterChange{Subscribers: []string{"zelo-a2"}}},
		{"location inserted", "INSERT INTO locations (id, org_id, name) VALUES ('a4', 'org-a', 'A four')",
			filterChange{Subscribers: orgA}},
		// The insert and the move commit together; the move's notification
		// comes last and names every user of both orgs (over-reporting is safe).
		{"location moved between orgs",
			"INSERT INTO locations (id, org_id, name) VALUES ('free', 'org-a', 'Free'); UPDATE locations SET org_id = 'org-b' WHERE id = 'free'",
			filterChange{Subscribers: append(slices.Clone(orgA), orgB...)}},
		{"org updated", "UPDATE orgs SET name = 'B renamed' WHERE id = 'org-b'",
			filterChange{Subscribers: orgB}},
		{"too many users for one notification",
			"INSERT INTO users (id, name, user_type, org_id) SELECT 'bulk-user-with-a-long-identifier-' || i, 'U', 'ZEWI', 'org-a' FROM generate_series(1, 300) i",
			filterChange{All: true}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := newWorld(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, db.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(ctx, "LISTEN pgrelay_filters"); err != nil {
				t.Fatal(err)
			}
			// Statements of one Exec run in one transaction; notifications
			// arrive at its commit, so take the last one.
			db.Exec(t, tt.change)
			db.Exec(t, "SELECT pg_notify('pgrelay_filters', 'end')")
			var got filterChange
			for {
				n, err := conn.WaitForNotification(ctx)
				if err != nil {
					t.Fatalf("wait for the filter notification: %v", err)
				}
				if n.Payload == "end" {
					break
				}
				if err := json.Unmarshal([]byte(n.Payload), &got); err != nil {
					t.Fatalf("payload %q is not JSON: %v", n.Payload, err)
				}
			}
			slices.Sort(got.Subscribers)
			want := tt.want
			slices.Sort(want.Subscribers)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("notification = %+v, want %+v", got, want)
			}
		})
	}
}

// Share lists stay in the creator's org, and the error does not tell another
// org's location from one that does not exist.
func TestAForeignLocationAndAnUnknownOneGetTheSameError(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	insertErr := func(location string) *pgconn.PgError {
		t.Helper()
		_, err := db.Pool.Exec(context.Background(),
			"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', ARRAY[$1], 'zowi-a')", location)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("sharing with %s: got %v, want an error", location, err)
		}
		return pgErr
	}
	foreign, unknown := insertErr("b1"), insertErr("zz")
	same := func(e *pgconn.PgError, id string) string {
		return strings.Join([]string{e.Code, strings.ReplaceAll(e.Message, id, "ID"), e.Detail, e.Hint, e.ConstraintName}, "|")
	}
	if a, b := same(foreign, "b1"), same(unknown, "zz"); a != b {
		t.Fatalf("another org's location and an unknown one are told apart:\n  %s\n  %s", a, b)
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM relay.events").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d events after refused inserts (%v), want 0", n, err)
	}
}

// An event's audience is computed once, in the inserting transaction
// (docs/design.md, "When audience keys are computed"): a creator who moves
// to another org afterwards does not take templates already written along,
// whether they have been delivered yet or not. Their later templates go to
// the new org.
func TestATemplateKeepsTheAudienceOfItsInsertWhenItsCreatorMovesToAnotherOrgBeforeDelivery(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	before := insertTemplate(t, db, "zolo-a3", []string{"a1"})
	db.Exec(t, "UPDATE users SET org_id = 'org-b', location_id = 'b1' WHERE id = 'zolo-a3'")
	after := insertTemplate(t, db, "zolo-a3", []string{"b2"})

	audience := func(templateID string) []string {
		return queryStrings(t, db, `SELECT unnest(audience) FROM relay.events WHERE payload->>'id' = $1`, templateID)
	}
	if got, want := audience(before), []string{"location:a1", "org:org-a"}; !slices.Equal(got, want) {
		t.Errorf("audience of the template written before the move = %v, want %v", got, want)
	}
	if got, want := audience(after), []string{"location:b2", "org:org-b"}; !slices.Equal(got, want) {
		t.Errorf("audience of the template written after the move = %v, want %v", got, want)
	}
	// Org A's owners keep the template written while the creator was
	// theirs; org B's owner does not get it by the move.
	if got, want := recipientsByFilters(t, db, before), []string{"zewi-a", "zolo-a1", "zowi-a", "zowi-a2"}; !slices.Equal(got, want) {
		t.Errorf("recipients of the template written before the move = %v, want %v", got, want)
	}
	if got, want := recipientsByFilters(t, db, after), []string{"zelo-b2", "zewi-b", "zowi-b"}; !slices.Equal(got, want) {
		t.Errorf("recipients of the template written after the move = %v, want %v", got, want)
	}
}

// A share list is turned into keys by expressions up to 8 ids and by one
// query from 9 on: both give every location once, however often it is
// listed, and the creator's org once, whatever the list's length.
func TestTheAudienceHasEachKeyOnceWhateverTheLengthOfTheShareList(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	repeat := func(n int) []string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = []string{"a2", "a1", "a3", "a1"}[i%4]
		}
		return ids
	}
	for _, tc := range []struct {
		shares []string
		want   []string
	}{
		{nil, []string{"org:org-a"}},
		{[]string{"a1"}, []string{"location:a1", "org:org-a"}},
		{[]string{"a1", "a1"}, []string{"location:a1", "org:org-a"}},
		{repeat(8), []string{"location:a1", "location:a2", "location:a3", "org:org-a"}},
		{repeat(9), []string{"location:a1", "location:a2", "location:a3", "org:org-a"}},
		{repeat(40), []string{"location:a1", "location:a2", "location:a3", "org:org-a"}},
	} {
		id := insertTemplate(t, db, "zewi-a", tc.shares)
		got := queryStrings(t, db, `SELECT unnest(audience) FROM relay.events WHERE payload->>'id' = $1`, id)
		if !slices.Equal(got, tc.want) {
			t.Errorf("audience of a template shared with %v = %v, want %v", tc.shares, got, tc.want)
		}
	}
	// A creator who is not a user (the foreign key refuses such a row, but
	// the function is the rule and may be asked directly) has no org key.
	for _, tc := range []struct {
		shares []string
		want   []string
	}{
		{repeat(2), []string{"location:a1", "location:a2"}},
		{repeat(12), []string{"location:a1", "location:a2", "location:a3"}},
	} {
		got := queryStrings(t, db, `SELECT unnest(relay.templates_audience(ROW('x', 't', $1, 'nobody', now())::templates))`, tc.shares)
		if !slices.Equal(got, tc.want) {
			t.Errorf("audience of %v by an unknown creator = %v, want %v", tc.shares, got, tc.want)
		}
	}
}
