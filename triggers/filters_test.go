package triggers_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

// relay.filters is written anew from relay.topics and relay.subscriber_source
// whenever either changes, so these tests change them in every way a
// deployment can and read the filters as the relay's role does.
func TestFiltersFollowEveryChangeOfTheTopicsAndTheSubscriberSource(t *testing.T) {
	t.Parallel()
	db := pgtest.NewCore(t)
	roles := pgtest.WithRoles(t, db)
	ctx := context.Background()
	relayConn, err := pgx.Connect(ctx, roles.RelayURL)
	if err != nil {
		t.Fatal(err)
	}
	defer relayConn.Close(ctx)
	filters := func() ([]string, error) {
		rows, _ := relayConn.Query(ctx, `
SELECT subscriber || ' ' || coalesce(topic || ' ' || key, '(exists)') FROM relay.filters(ARRAY['1', '2', '9'])`)
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		slices.Sort(got)
		return got, err
	}
	expect := func(step string, want ...string) {
		t.Helper()
		got, err := filters()
		if err != nil {
			t.Fatalf("%s: relay.filters as the relay's role: %v", step, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: filters = %v, want %v", step, got, want)
		}
	}

	if _, err := filters(); err == nil || !strings.Contains(err.Error(), "no subscriber source is configured") {
		t.Fatalf("before a subscriber source is set: err = %v, want one saying none is configured", err)
	}

	// The app's objects live in a schema of their own, off the search_path
	// relay.filters runs with, and its ids are integers.
	db.Exec(t, `
CREATE SCHEMA app;
CREATE TABLE app.people (id integer PRIMARY KEY, team text NOT NULL, badge text NOT NULL);
INSERT INTO app.people VALUES (1, 'red', 'gold'), (2, 'blue', 'iron');
CREATE TABLE app.notes (id serial PRIMARY KEY, body text NOT NULL);
CREATE FUNCTION app.notes_audience(n app.notes) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT '{}'::text[] $$;
CREATE FUNCTION app.team_keys(subscriber text) RETURNS SETOF text LANGUAGE sql STABLE AS
    $$ SELECT 'team:' || team FROM app.people WHERE id::text = subscriber $$;
CREATE FUNCTION app.badge_keys(subscriber text) RETURNS SETOF text LANGUAGE sql STABLE AS
    $$ SELECT 'badge:' || badge FROM app.people WHERE id::text = subscriber $$;
SELECT relay.set_subscriber_source('app.people', 'id');`)
	expect("a subscriber source without topics", "1 (exists)", "2 (exists)")

	db.Exec(t, `
SELECT relay.create_topic('teams', 'app.notes', 'app.notes_audience(app.notes)', 'app.team_keys(text)');
SELECT relay.create_topic('badges', 'app.notes', 'app.notes_audience(app.notes)', 'app.badge_keys(text)');`)
	expect("two topics", "1 (exists)", "1 badges badge:gold", "1 teams team:red", "2 (exists)", "2 badges badge:iron", "2 teams team:blue")

	// create_topic again with other keys replaces the topic's.
	db.Exec(t, `SELECT relay.create_topic('badges', 'app.notes', 'app.notes_audience(app.notes)', 'app.team_keys(text)')`)
	expect("a topic given other keys", "1 (exists)", "1 badges team:red", "1 teams team:red", "2 (exists)", "2 badges team:blue", "2 teams team:blue")

	db.Exec(t, `SELECT relay.drop_topic('teams')`)
	expect("a topic dropped", "1 (exists)", "1 badges team:red", "2 (exists)", "2 badges team:blue")

	// A subscriber_keys function's new body counts at once, in sessions
	// that have already used the old one.
	db.Exec(t, `CREATE OR REPLACE FUNCTION app.team_keys(subscriber text) RETURNS SETOF text LANGUAGE sql STABLE AS
    $$ SELECT 'squad:' || team FROM app.people WHERE id::text = subscriber $$`)
	expect("a subscriber_keys function replaced", "1 (exists)", "1 badges squad:red", "2 (exists)", "2 badges squad:blue")

	// Edited by hand rather than through pgrelay's functions.
	db.Exec(t, `DELETE FROM relay.topics`)
	expect("the topics deleted by hand", "1 (exists)", "2 (exists)")
	db.Exec(t, `DELETE FROM relay.subscriber_source`)
	if _, err := filters(); err == nil || !strings.Contains(err.Error(), "no subscriber source is configured") {
		t.Fatalf("after the subscriber source was deleted: err = %v, want one saying none is configured", err)
	}
}

func TestRebuildingTheFiltersWarnsOfATopicWhoseKeysFunctionWasDroppedAndServesTheOthers(t *testing.T) {
	t.Parallel()
	db := pgtest.NewCore(t)
	ctx := context.Background()
	db.Exec(t, `
CREATE TABLE people (id text PRIMARY KEY);
INSERT INTO people VALUES ('1');
CREATE TABLE notes (id serial PRIMARY KEY);
CREATE FUNCTION notes_audience(n notes) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT '{}'::text[] $$;
CREATE FUNCTION kept_keys(subscriber text) RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT 'kept:' || subscriber $$;
CREATE FUNCTION gone_keys(subscriber text) RETURNS SETOF text LANGUAGE sql STABLE AS $$ SELECT 'gone:' || subscriber $$;
SELECT relay.set_subscriber_source('public.people', 'id');
SELECT relay.create_topic('kept', 'notes', 'notes_audience(notes)', 'kept_keys(text)');
SELECT relay.create_topic('orphan', 'notes', 'notes_audience(notes)', 'gone_keys(text)');
DROP FUNCTION gone_keys(text);`)

	cfg, err := pgx.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if n.Severity == "WARNING" {
			warnings = append(warnings, n.Message)
		}
	}
	owner, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	if _, err := owner.Exec(ctx, `SELECT relay.build_filters()`); err != nil {
		t.Fatalf("rebuild with a keys function gone: %v", err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "topic orphan is left out of the filters") {
		t.Errorf("warnings = %q, want one naming topic orphan", warnings)
	}
	rows, _ := owner.Query(ctx, `SELECT coalesce(topic || ' ' || key, '(exists)') FROM relay.filters(ARRAY['1'])`)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("filters after the rebuild: %v", err)
	}
	slices.Sort(got)
	if want := []string{"(exists)", "kept kept:1"}; !slices.Equal(got, want) {
		t.Errorf("filters = %v, want %v: the other topic served as before", got, want)
	}

	warnings = nil
	if _, err := owner.Exec(ctx, `DROP TABLE people; SELECT relay.build_filters()`); err != nil {
		t.Fatalf("rebuild with the subscriber table gone: %v", err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "the subscriber source table") {
		t.Errorf("warnings = %q, want one naming the subscriber source table", warnings)
	}
}
