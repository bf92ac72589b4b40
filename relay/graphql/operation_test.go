package graphql

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/graphql/schema"
	"github.com/pgrelay/pgrelay/relay/hub"
)

// testSchema has the templates topic and one with every kind of column.
func testSchema(t *testing.T) *schema.Schema {
	t.Helper()
	c := func(topic, column, typ string, notNull, array bool) schema.CatalogColumn {
		return schema.CatalogColumn{Topic: topic, Source: "public." + topic, Column: column, Type: typ, TypeType: "b", NotNull: notNull, Array: array}
	}
	s, err := schema.Build([]schema.CatalogColumn{
		c("kinds", "big", "int8", true, false),
		c("kinds", "ratio", "float8", false, false),
		c("kinds", "num", "numeric", false, false),
		c("kinds", "doc", "jsonb", false, false),
		c("kinds", "counts", "int4", false, true),
		c("kinds", "label", "text", false, false),
		c("templates", "id", "text", true, false),
		c("templates", "name", "text", true, false),
		c("templates", "share_location_ids", "text", true, true),
		c("templates", "created_by", "text", true, false),
		c("templates", "created_at", "timestamptz", true, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func event(t *testing.T, id string, row string) *hub.Message {
	t.Helper()
	eid, err := eventlog.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	return hub.NewMessage(eventlog.Event{ID: eid, Topic: "templates", Payload: json.RawMessage(row)})
}

const templateRow = `{"id": "t-1", "name": "Q3 menu", "created_at": "2026-12-02T04:28:51.123456+00:00", "created_by": "user-5", "share_location_ids": ["loc-1", "loc-2"]}`

func TestSubscriptionResultsCarryOnlyTheSelectedFieldsInTheirOrderWithAliasesFragmentsAndTypename(t *testing.T) {
	s := testSchema(t)
	const id = "0000000000000001-0000000000000002"
	for _, tc := range []struct {
		name, query string
		vars        map[string]any
		want        string
	}{
		{"the seed's subscription", seedQuery, nil,
			`{"data":{"templateAdded":{"id":"t-1","name":"Q3 menu","shareLocationIds":["loc-1","loc-2"]}},"extensions":{"id":"` + id + `"}}`},
		{"aliases and __typename", `subscription { t: templateAdded { __typename who: createdBy when: createdAt } }`, nil,
			`{"data":{"t":{"__typename":"Template","who":"user-5","when":"2026-12-02T04:28:51.123456+00:00"}},"extensions":{"id":"` + id + `"}}`},
		{"named and inline fragments, merged", `subscription { templateAdded { ...F ... on Template { name id } } } fragment F on Template { id }`, nil,
			`{"data":{"templateAdded":{"id":"t-1","name":"Q3 menu"}},"extensions":{"id":"` + id + `"}}`},
		{"@skip and @include by variables", `subscription($no: Boolean!, $yes: Boolean!) { templateAdded { id @skip(if: $no) name @include(if: $no) createdBy @include(if: $yes) } }`,
			map[string]any{"no": true, "yes": true},
			`{"data":{"templateAdded":{"name":"Q3 menu","createdBy":"user-5"}},"extensions":{"id":"` + id + `"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op, errs := compile(s, request{Query: tc.query, Variables: tc.vars})
			if errs != nil {
				t.Fatalf("compile: %v", errs)
			}
			got, err := op.result(nil, event(t, id, templateRow))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

const seedQuery = `subscription { templateAdded { id name shareLocationIds } }`

func TestColumnValuesAreSerialisedAsTheirGraphQLTypes(t *testing.T) {
	s := testSchema(t)
	op, errs := compile(s, request{Query: `subscription { kindAdded { big ratio num doc counts label } }`})
	if errs != nil {
		t.Fatal(errs)
	}
	row := `{"big": 9007199254740993, "ratio": "NaN", "num": 12.500, "doc": {"a": [1, "ü"]}, "counts": [1, null, 3], "label": null}`
	got, err := op.result(nil, event(t, "0000000000000001-0000000000000002", row))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"data":{"kindAdded":{"big":"9007199254740993","ratio":null,"num":"12.500","doc":{"a": [1, "ü"]},"counts":[1,null,3],"label":null}}`
	if !strings.HasPrefix(string(got), want) {
		t.Errorf("got  %s\nwant %s…", got, want)
	}
	var v any
	if err := json.Unmarshal(got, &v); err != nil {
		t.Errorf("result is not JSON: %v", err)
	}
}

func TestInvalidDocumentsGetGraphQLErrorsWithLocations(t *testing.T) {
	s := testSchema(t)
	for _, tc := range []struct {
		name, query, want string
		line, column      int
		vars              map[string]any
	}{
		{"an unknown field", "subscription {\n  templateAdded { colour }\n}", "colour", 2, 19, nil},
		{"a syntax error", "subscription { templateAdded { id }", "Expected", 1, 36, nil},
		{"two root fields", "subscription { a: templateAdded { id } b: templateAdded { id } }", "exactly one field", 1, 1, nil},
		{"a mutation", "mutation { x }", "", 1, 1, nil},
		{"a bad after id", `subscription { templateAdded(after: "yesterday") { id } }`, "after:", 1, 30, nil},
		{"a bad after variable", `subscription($a: String) { templateAdded(after: $a) { id } }`, "after:", 1, 42, map[string]any{"a": "42"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := compile(s, request{Query: tc.query, Variables: tc.vars})
			if len(errs) == 0 {
				t.Fatal("compiled")
			}
			e := errs[0]
			if !strings.Contains(e.Message, tc.want) || len(e.Locations) == 0 || e.Locations[0].Line != tc.line || e.Locations[0].Column != tc.column {
				t.Errorf("got %q at %v, want a message with %q at %d:%d", e.Message, e.Locations, tc.want, tc.line, tc.column)
			}
		})
	}
}

func TestAValidAfterIsTheResumePoint(t *testing.T) {
	s := testSchema(t)
	const id = "00000000000000ff-0000000000000003"
	op, errs := compile(s, request{Query: `subscription($a: String) { templateAdded(after: $a) { id } }`, Variables: map[string]any{"a": id}})
	if errs != nil {
		t.Fatal(errs)
	}
	if op.After == nil || op.After.String() != id || op.Topic.Name != "templates" {
		t.Errorf("after %v topic %v, want %s on templates", op.After, op.Topic, id)
	}
}

func TestQueriesAreAnsweredFromTheSchema(t *testing.T) {
	s := testSchema(t)
	for _, tc := range []struct{ query, want string }{
		{`{ topics }`, `{"data":{"topics":["kinds","templates"]}}`},
		{`{ __typename }`, `{"data":{"__typename":"Query"}}`},
		{`{ __type(name: "Template") { kind name fields { name type { kind name ofType { kind name ofType { name } } } } } }`,
			`{"data":{"__type":{"kind":"OBJECT","name":"Template","fields":[` +
				`{"name":"id","type":{"kind":"NON_NULL","name":null,"ofType":{"kind":"SCALAR","name":"String","ofType":null}}},` +
				`{"name":"name","type":{"kind":"NON_NULL","name":null,"ofType":{"kind":"SCALAR","name":"String","ofType":null}}},` +
				`{"name":"shareLocationIds","type":{"kind":"NON_NULL","name":null,"ofType":{"kind":"LIST","name":null,"ofType":{"name":"String"}}}},` +
				`{"name":"createdBy","type":{"kind":"NON_NULL","name":null,"ofType":{"kind":"SCALAR","name":"String","ofType":null}}},` +
				`{"name":"createdAt","type":{"kind":"NON_NULL","name":null,"ofType":{"kind":"SCALAR","name":"String","ofType":null}}}]}}}`},
		{`{ __type(name: "Nope") { name } }`, `{"data":{"__type":null}}`},
		{`query Q { __schema { queryType { name } mutationType { name } subscriptionType { name fields { name args { name defaultValue type { name } } } } } }`,
			`{"data":{"__schema":{"queryType":{"name":"Query"},"mutationType":null,"subscriptionType":{"name":"Subscription","fields":[` +
				`{"name":"kindAdded","args":[{"name":"after","defaultValue":null,"type":{"name":"String"}}]},` +
				`{"name":"templateAdded","args":[{"name":"after","defaultValue":null,"type":{"name":"String"}}]}]}}}}`},
	} {
		op, errs := compile(s, request{Query: tc.query})
		if errs != nil {
			t.Errorf("%s: %v", tc.query, errs)
			continue
		}
		if string(op.Result) != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.query, op.Result, tc.want)
		}
	}
}

func TestPayloadTokenIsReadFromTheShapesClientsSend(t *testing.T) {
	for _, tc := range []struct{ payload, want, err string }{
		{``, "", ""},
		{`null`, "", ""},
		{`{}`, "", ""},
		{`{"authorization": "Bearer abc"}`, "abc", ""},
		{`{"Authorization": "bearer abc"}`, "abc", ""},
		{`{"headers": {"Authorization": "Bearer abc"}}`, "abc", ""},
		{`{"access_token": "abc"}`, "abc", ""},
		{`{"authorization": "Bearer abc", "access_token": "abc"}`, "abc", ""},
		{`{"authorization": "Bearer abc", "access_token": "xyz"}`, "", "different tokens"},
		{`{"authorization": "abc"}`, "", "Bearer <jwt>"},
		{`{"authorization": 5}`, "", "must be a string"},
		{`[1]`, "", "JSON object"},
	} {
		got, err := payloadToken(json.RawMessage(tc.payload))
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("payload %s: got %q, %v; want %q, error containing %q", tc.payload, got, err, tc.want, tc.err)
		}
	}
}

func TestOperationsWithTheSameSelectionEncodeAnEventOnce(t *testing.T) {
	s := testSchema(t)
	compileOp := func(q string) *operation {
		op, errs := compile(s, request{Query: q})
		if errs != nil {
			t.Fatal(errs)
		}
		return op
	}
	var all shapes
	a, b := compileOp(seedQuery), compileOp("subscription {\n templateAdded { id, name, shareLocationIds } }")
	other := compileOp(`subscription { templateAdded { id name } }`)
	sa, sb, so := all.acquire(a), all.acquire(b), all.acquire(other)
	if sa != sb || sa == so {
		t.Fatalf("shapes %p %p %p: the same selection must share one, another must not", sa, sb, so)
	}
	m := event(t, "0000000000000001-0000000000000002", templateRow)
	first, err := a.encode(nil, m, sa, &all)
	if err != nil {
		t.Fatal(err)
	}
	if sa.body == nil || string(sa.body) != string(first) {
		t.Fatalf("a shared shape kept %q, want the result", sa.body)
	}
	// The second operation gets the kept copy, even of another Message of
	// the same event (a replay).
	again, _ := b.encode([]byte("prefix:"), event(t, "0000000000000001-0000000000000002", `{"id": "changed"}`), sb, &all)
	if string(again) != "prefix:"+string(first) {
		t.Errorf("got %s, want the kept result", again)
	}
	if _, err := other.encode(nil, m, so, &all); err != nil || so.body != nil {
		t.Errorf("a selection used once kept %q", so.body)
	}
	all.release(sa)
	all.release(sb)
	all.release(so)
	if len(all.m) != 0 {
		t.Errorf("%d shapes left after every operation ended", len(all.m))
	}
}

func TestAQueryWhoseResultWouldPassOneMiBIsRefused(t *testing.T) {
	s := testSchema(t)
	var q strings.Builder
	q.WriteString("{")
	for i := range 400 {
		fmt.Fprintf(&q, " a%d: __schema { types { name description fields { name description args { name } type { name } } } }", i)
	}
	q.WriteString(" }")
	_, errs := compile(s, request{Query: q.String()})
	if len(errs) != 1 || !strings.Contains(errs[0].Message, "exceed") {
		t.Errorf("got %v, want the result refused as too large", errs)
	}
}
