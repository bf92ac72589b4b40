package templates_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

// The capture trigger and the audience function it calls run as the
// topic's owner, who may write the log. A producer that may create a schema
// of its own fills it with look-alikes of every function and operator the
// capture and the template app's audience rule use, each of which tries to
// write a forged event, and puts that schema first on its search_path: the
// capture must resolve none of them (it runs with a fixed search_path), so
// nothing but the producer's own rows reaches the log, with their true keys.
func TestAProducersSearchPathCannotHijackTheCaptureOrTheAudienceRule(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	roles := pgtest.WithRoles(t, db)
	ctx := context.Background()
	db.Exec(t, fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s", pgx.Identifier{db.Name}.Sanitize(), roles.Producer))

	producer, err := pgx.Connect(ctx, roles.ProducerURL)
	if err != nil {
		t.Fatalf("connect as the producer: %v", err)
	}
	defer producer.Close(ctx)

	// forge is what every look-alike runs first: it succeeds only for a
	// role that may write the log, and is silent otherwise, so that the
	// app's own checks (which run as the producer) still pass.
	setup := `
CREATE SCHEMA mine;
CREATE FUNCTION mine.forge() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $f$INSERT INTO relay.events (topic, payload, audience) VALUES ('templates', '{"id": "forged"}', '{location:a1}')$f$;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END $$;
CREATE FUNCTION mine.cat(a text, b text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.textcat(a, b); END $$;
CREATE OPERATOR mine.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = mine.cat);
CREATE FUNCTION mine.eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.texteq(a, b); END $$;
CREATE OPERATOR mine.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mine.eq);
CREATE FUNCTION mine.arraycat(a text[], b text[]) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.array_cat(a, b); END $$;
CREATE OPERATOR mine.|| (LEFTARG = text[], RIGHTARG = text[], FUNCTION = mine.arraycat);
CREATE FUNCTION mine.append(a text[], b text) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.array_append(a, b); END $$;
CREATE OPERATOR mine.|| (LEFTARG = text[], RIGHTARG = text, FUNCTION = mine.append);
CREATE FUNCTION mine.to_jsonb(r public.templates) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.to_jsonb(r); END $$;
CREATE FUNCTION mine.array_position(a text[], e text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.array_position(a, e); END $$;
CREATE FUNCTION mine.cardinality(a text[]) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.cardinality(a); END $$;
CREATE FUNCTION mine.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN QUERY SELECT * FROM pg_catalog.unnest(a); END $$;
CREATE FUNCTION mine.nextval(s regclass) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN 5; END $$;
CREATE FUNCTION mine.coalesce(a text[], b text[]) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN PERFORM mine.forge(); RETURN pg_catalog.array_cat(a, b); END $$;
SET search_path = mine, pg_catalog, public;`
	if _, err := producer.Exec(ctx, setup); err != nil {
		t.Fatalf("the producer's look-alikes: %v", err)
	}
	// The look-alikes are live for the producer's own statements.
	var got string
	if err := producer.QueryRow(ctx, "SELECT 'a' || 'b'").Scan(&got); err != nil || got != "ab" {
		t.Fatalf("the producer's own || = %q, %v", got, err)
	}

	// Short lists take the audience rule's expression path, long ones its
	// query; the sequencer is idle, so the capture also draws a wake-up
	// ticket.
	db.Exec(t, "UPDATE relay.sequencer SET idle = true")
	want := map[string][]string{}
	for _, shares := range [][]string{{"a1"}, {"a2", "a1", "a2"}, slices.Repeat([]string{"a1", "a3", "a2"}, 5)} {
		var id string
		if err := producer.QueryRow(ctx,
			`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', $1, 'zewi-a') RETURNING id`,
			shares).Scan(&id); err != nil {
			t.Fatalf("insert as the producer, shared with %v: %v", shares, err)
		}
		keys := []string{"org:org-a"}
		for _, s := range shares {
			if k := "location:" + s; !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		want[id] = keys
	}

	if forged := queryStrings(t, db, `SELECT xid::text FROM relay.events WHERE payload->>'id' = 'forged'`); len(forged) != 0 {
		t.Errorf("%d forged events in the log: a look-alike ran as the topic's owner", len(forged))
	}
	for id, keys := range want {
		if got := queryStrings(t, db, `SELECT unnest(audience) FROM relay.events WHERE payload->>'id' = $1`, id); !slices.Equal(got, keys) {
			t.Errorf("audience of template %s = %v, want %v", id, got, keys)
		}
	}
	if got := queryStrings(t, db, `SELECT payload->>'id' FROM relay.events`); len(got) != len(want) {
		t.Errorf("the log holds %d events, want the producer's %d", len(got), len(want))
	}
}
