package schema_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/graphql/schema"
)

func TestSingularNamesATopicsTypeByItsLastWord(t *testing.T) {
	for topic, want := range map[string]string{
		"templates": "Template", "order_items": "OrderItem", "categories": "Category", "addresses": "Address",
		"boxes": "Box", "watches": "Watch", "status": "Statu", "access": "Access", "news_feed": "NewsFeed",
		"s": "S", "sheep": "Sheep", "v2_events": "V2Event",
	} {
		if got := schema.Singular(topic); got != want {
			t.Errorf("Singular(%q) = %q, want %q", topic, got, want)
		}
	}
}

func TestCamelCaseJoinsWordsOfAColumnName(t *testing.T) {
	for column, want := range map[string]string{
		"share_location_ids": "shareLocationIds", "id": "id", "created_at": "createdAt", "_private": "_private",
		"a__b": "aB", "ip4_addr": "ip4Addr",
	} {
		if got := schema.CamelCase(column); got != want {
			t.Errorf("CamelCase(%q) = %q, want %q", column, got, want)
		}
	}
}

func col(topic, column, typ string, notNull, array bool) schema.CatalogColumn {
	return schema.CatalogColumn{Topic: topic, Source: "public." + topic, Column: column, Type: typ, TypeType: "b", NotNull: notNull, Array: array}
}

func TestTopicsWhoseTypeNamesCollideAreNamedDeterministically(t *testing.T) {
	s, err := schema.Build([]schema.CatalogColumn{
		col("queries", "id", "text", true, false),
		col("template", "id", "text", true, false),
		col("templates", "id", "text", true, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"queryRowAdded": "QueryRow", "templateAdded": "Template", "templatesAdded": "Templates"}
	for field, typ := range want {
		if got := s.Topics[field]; got == nil || got.TypeName != typ {
			t.Errorf("subscription field %s: got %+v, want type %s", field, got, typ)
		}
	}
	if s.Topics["templateAdded"].Name != "template" {
		t.Errorf("templateAdded serves topic %q, want the one named singular", s.Topics["templateAdded"].Name)
	}
}

func TestColumnsWithoutAGraphQLNameOrWithACollidingOneAreLeftOutAndSaidSo(t *testing.T) {
	s, err := schema.Build([]schema.CatalogColumn{
		col("things", "id", "text", true, false),
		col("things", "Odd Name", "text", false, false),
		col("things", "some_field", "text", false, false),
		col("things", "someField", "text", false, false),
		col("things", "__hidden", "text", false, false),
		col("empties", "bad name", "text", false, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	thing := s.Topics["thingAdded"]
	var fields []string
	for _, c := range thing.Columns {
		fields = append(fields, c.Field)
	}
	if strings.Join(fields, ",") != "id,someField" || thing.Column("someField").Name != "some_field" {
		t.Errorf("fields %v, want id and someField (from some_field, the first)", fields)
	}
	if s.Topics["emptyAdded"] != nil {
		t.Errorf("a topic without a usable column is in the schema")
	}
	if len(s.Skipped) != 5 {
		t.Errorf("skipped %q, want the four columns and the empty topic named", s.Skipped)
	}
}

func TestLoadTypesColumnsFromTheirPostgreSQLTypes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `
CREATE TYPE public.mood AS ENUM ('calm', 'busy');
CREATE DOMAIN public.positive AS integer CHECK (VALUE > 0);
CREATE TABLE public.kinds (
    small    smallint NOT NULL, whole integer, big bigint NOT NULL, num numeric,
    ratio    double precision, flag boolean, label varchar(20), uid uuid,
    at       timestamptz, day date, doc jsonb, raw json, tags text[] NOT NULL,
    counts   integer[], feeling public.mood, size public.positive, blob bytea, spot point
);
CREATE FUNCTION public.kinds_audience(public.kinds) RETURNS text[] LANGUAGE sql AS $$ SELECT '{}'::text[] $$;
CREATE FUNCTION public.kinds_keys(text) RETURNS SETOF text LANGUAGE sql AS $$ SELECT NULL::text WHERE false $$;
SELECT relay.create_topic(topic => 'kinds', source => 'public.kinds',
    audience => 'public.kinds_audience(public.kinds)', subscriber_keys => 'public.kinds_keys(text)');`)
	s, err := schema.Load(context.Background(), db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"templateAdded(after: String): Template!",
		"kindAdded(after: String): Kind!",
		"small: Int!", "whole: Int\n", "big: BigInt!", "num: BigFloat\n", "ratio: Float\n", "flag: Boolean\n",
		"label: String\n", "uid: String\n", "at: String\n", "day: String\n", "doc: JSON\n", "raw: JSON\n",
		"tags: [String]!", "counts: [Int]\n", "feeling: String\n", "size: Int\n", "blob: String\n", "spot: JSON\n",
		"shareLocationIds: [String]!", "createdAt: String!",
	} {
		if !strings.Contains(s.SDL, want) {
			t.Errorf("schema lacks %q:\n%s", want, s.SDL)
		}
	}
}

func TestASchemaWithoutTopicsStillHasAQueryType(t *testing.T) {
	s, err := schema.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.AST.Query == nil || s.AST.Subscription != nil {
		t.Errorf("query %v subscription %v, want a query type and no subscription type", s.AST.Query, s.AST.Subscription)
	}
}

func TestTheCacheServesATopicAddedInSQLOnceItsSchemaIsStale(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	cache := schema.NewCache(db.Pool, 0, nil) // always stale
	before, err := cache.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.Topics["noteAdded"] != nil {
		t.Fatal("noteAdded before the topic exists")
	}
	db.Exec(t, `
CREATE TABLE public.notes (id bigint PRIMARY KEY, body text NOT NULL);
CREATE FUNCTION public.notes_audience(public.notes) RETURNS text[] LANGUAGE sql AS $$ SELECT '{}'::text[] $$;
CREATE FUNCTION public.notes_keys(text) RETURNS SETOF text LANGUAGE sql AS $$ SELECT NULL::text WHERE false $$;
SELECT relay.create_topic(topic => 'notes', source => 'public.notes',
    audience => 'public.notes_audience(public.notes)', subscriber_keys => 'public.notes_keys(text)');`)
	after, err := cache.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if note := after.Topics["noteAdded"]; note == nil || note.Column("body") == nil || !strings.Contains(after.SDL, "id: BigInt!") {
		t.Errorf("after create_topic: %v\n%s", note, after.SDL)
	}
	fresh := schema.NewCache(db.Pool, time.Hour, nil)
	first, _ := fresh.Get(ctx)
	db.Exec(t, `SELECT relay.drop_topic('notes')`)
	if again, _ := fresh.Get(ctx); again != first {
		t.Errorf("a fresh schema was read again before it was stale")
	}
}
