// Package schema derives a GraphQL schema from the relay's topics: for each
// topic a subscription field `<singular>Added(after: String): <Type>!` whose
// object type has one field per column of the topic's source table, in
// camelCase, typed from the column's PostgreSQL type. Nothing in Go names a
// topic: a table registered with relay.create_topic appears here at the next
// reload.
package schema

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"
)

// Kind is how a column's JSON value (as to_jsonb gives it) becomes a GraphQL
// value.
type Kind int

// Column kinds.
const (
	// String: text-like types, dates and times (to_jsonb's ISO 8601, which
	// is RFC 3339 for timestamptz), uuid, enums; a non-string JSON value is
	// sent as its JSON text.
	String Kind = iota
	// Int: int2 and int4, which fit GraphQL's 32-bit Int.
	Int
	// BigInt: int8 and oid, sent as a string of decimal digits, since
	// JavaScript numbers lose integers beyond 2^53.
	BigInt
	// Float: float4 and float8; NaN and the infinities, which GraphQL
	// cannot represent, are sent as null.
	Float
	// BigFloat: numeric, sent as a string so no digit is lost.
	BigFloat
	// Boolean: bool.
	Boolean
	// JSON: json, jsonb and every type not listed above, sent as to_jsonb
	// gives it.
	JSON
)

var scalarOf = map[Kind]string{
	String: "String", Int: "Int", BigInt: "BigInt", Float: "Float", BigFloat: "BigFloat", Boolean: "Boolean", JSON: "JSON",
}

// kindOf maps a PostgreSQL base type name to a kind.
func kindOf(typname, typtype string) Kind {
	switch typname {
	case "int2", "int4":
		return Int
	case "int8", "oid", "xid8":
		return BigInt
	case "float4", "float8":
		return Float
	case "numeric":
		return BigFloat
	case "bool":
		return Boolean
	case "json", "jsonb":
		return JSON
	case "text", "varchar", "bpchar", "char", "name", "citext", "uuid", "bytea",
		"timestamptz", "timestamp", "date", "time", "timetz", "interval",
		"inet", "cidr", "macaddr", "macaddr8", "money", "xml", "bit", "varbit", "tsvector":
		return String
	}
	if typtype == "e" {
		return String
	}
	return JSON
}

// Column is one field of a topic's type.
type Column struct {
	Name    string // the column, which is the row's JSON key
	Field   string // its GraphQL field name
	Kind    Kind
	List    bool // an array column
	NotNull bool
	PGType  string // for descriptions
}

// Topic is one topic as the schema shows it.
type Topic struct {
	Name     string // relay topic
	Source   string // its table
	TypeName string // the row's object type
	Field    string // the subscription field
	Columns  []Column
	// byField indexes Columns.
	byField map[string]*Column
}

// Column returns the column behind a field of the topic's type.
func (t *Topic) Column(field string) *Column { return t.byField[field] }

// Schema is the GraphQL schema of one set of topics.
type Schema struct {
	AST *ast.Schema
	SDL string
	// Topics by subscription field name.
	Topics map[string]*Topic
	// Skipped says, per topic or column left out, why (for the log).
	Skipped []string
}

// TopicNames returns the relay topics the schema serves, sorted.
func (s *Schema) TopicNames() []string {
	out := make([]string, 0, len(s.Topics))
	for _, t := range s.Topics {
		out = append(out, t.Name)
	}
	sort.Strings(out)
	return out
}

// reserved are type names the schema itself uses.
var reserved = map[string]bool{
	"Query": true, "Mutation": true, "Subscription": true, "String": true, "Int": true, "Float": true,
	"Boolean": true, "ID": true, "JSON": true, "BigInt": true, "BigFloat": true,
}

var graphqlName = regexp.MustCompile(`^[_A-Za-z][_0-9A-Za-z]*$`)

// Singular is the rule that names a topic's type: its last word made
// singular ("ies" → "y"; "sses", "shes", "ches", "xes", "zes" lose "es";
// a final "ss" stays; otherwise a final "s" goes), then every word
// capitalised: templates → Template, order_items → OrderItem, categories →
// Category, addresses → Address.
func Singular(topic string) string {
	words := strings.Split(topic, "_")
	last := words[len(words)-1]
	switch {
	case strings.HasSuffix(last, "ies") && len(last) > 3:
		last = last[:len(last)-3] + "y"
	case hasAnySuffix(last, "sses", "shes", "ches", "xes", "zes"):
		last = last[:len(last)-2]
	case strings.HasSuffix(last, "ss"):
	case strings.HasSuffix(last, "s") && len(last) > 1:
		last = last[:len(last)-1]
	}
	words[len(words)-1] = last
	return pascal(words)
}

func hasAnySuffix(s string, suffixes ...string) bool {
	for _, x := range suffixes {
		if strings.HasSuffix(s, x) && len(s) > len(x) {
			return true
		}
	}
	return false
}

func pascal(words []string) string {
	var b strings.Builder
	for _, w := range words {
		if w == "" {
			continue
		}
		b.WriteString(strings.ToUpper(w[:1]))
		b.WriteString(w[1:])
	}
	return b.String()
}

// CamelCase is a column's field name: share_location_ids → shareLocationIds.
// Leading underscores are kept.
func CamelCase(column string) string {
	trimmed := strings.TrimLeft(column, "_")
	lead := column[:len(column)-len(trimmed)]
	words := strings.Split(trimmed, "_")
	if len(words) == 0 || words[0] == "" {
		return column
	}
	return lead + words[0] + pascal(words[1:])
}

// CatalogColumn is one column of one topic's table, as the catalog
// describes it.
type CatalogColumn struct {
	Topic, Source, Column string
	NotNull, Array        bool
	// Type is the base type's name (the element type of an array, the
	// base of a domain); TypeType its pg_type.typtype.
	Type, TypeType string
}

// catalogSQL lists the columns of every topic's source table. Domains are
// seen through to their base type.
const catalogSQL = `
SELECT t.topic, t.source::text, a.attname::text, a.attnotnull,
       ty.typcategory = 'A',
       coalesce(el.typname, base.typname)::text,
       coalesce(el.typtype, base.typtype)::text
  FROM relay.topics t
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.source AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
  JOIN pg_catalog.pg_type base ON base.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  LEFT JOIN pg_catalog.pg_type el ON ty.typcategory = 'A' AND el.oid = base.typelem
 ORDER BY t.topic, a.attnum`

// Querier runs the catalog query: a pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Load reads the topics and their tables' columns and builds the schema.
func Load(ctx context.Context, q Querier) (*Schema, error) {
	rows, err := q.Query(ctx, catalogSQL)
	if err != nil {
		return nil, fmt.Errorf("read topic columns for the GraphQL schema: %w", err)
	}
	var cols []CatalogColumn
	for rows.Next() {
		var r CatalogColumn
		if err := rows.Scan(&r.Topic, &r.Source, &r.Column, &r.NotNull, &r.Array, &r.Type, &r.TypeType); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read topic columns for the GraphQL schema: %w", err)
		}
		cols = append(cols, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read topic columns for the GraphQL schema: %w", err)
	}
	return Build(cols)
}

// Build makes the schema of the given columns, ordered by topic, then
// column position.
func Build(cols []CatalogColumn) (*Schema, error) {
	s := &Schema{Topics: map[string]*Topic{}}
	var topics []*Topic
	typeTaken := map[string]bool{}
	for i := 0; i < len(cols); {
		j := i
		for j < len(cols) && cols[j].Topic == cols[i].Topic {
			j++
		}
		if t := s.topic(cols[i:j], typeTaken); t != nil {
			topics = append(topics, t)
		}
		i = j
	}
	sdl := sdl(topics)
	parsed, err := gqlparser.LoadSchema(&ast.Source{Name: "pgrelay.graphql", Input: sdl})
	if err != nil {
		return nil, fmt.Errorf("build the GraphQL schema: %w", err)
	}
	s.AST, s.SDL = parsed, sdl
	for _, t := range topics {
		s.Topics[t.Field] = t
	}
	return s, nil
}

// topic names one topic's type and fields, or leaves it out (nil) with the
// reason in s.Skipped. Topics come in name order, so which of two colliding
// topics keeps the singular name does not depend on anything else.
func (s *Schema) topic(cols []CatalogColumn, typeTaken map[string]bool) *Topic {
	name := cols[0].Topic
	typeName := Singular(name)
	if reserved[typeName] {
		typeName += "Row"
	}
	if typeTaken[typeName] {
		// Another topic has the singular: this one keeps its plural.
		typeName = pascal(strings.Split(name, "_"))
		if reserved[typeName] {
			typeName += "Row"
		}
	}
	if typeTaken[typeName] || !graphqlName.MatchString(typeName) {
		s.Skipped = append(s.Skipped, fmt.Sprintf("topic %s: its type name %s is taken", name, typeName))
		return nil
	}
	t := &Topic{
		Name: name, Source: cols[0].Source, TypeName: typeName,
		Field: strings.ToLower(typeName[:1]) + typeName[1:] + "Added", byField: map[string]*Column{},
	}
	for _, c := range cols {
		field := CamelCase(c.Column)
		switch {
		case !graphqlName.MatchString(field) || strings.HasPrefix(field, "__"):
			s.Skipped = append(s.Skipped, fmt.Sprintf("topic %s: column %q is not a GraphQL name", name, c.Column))
			continue
		case t.byField[field] != nil:
			s.Skipped = append(s.Skipped, fmt.Sprintf("topic %s: column %q has the same field name as %q", name, c.Column, t.byField[field].Name))
			continue
		}
		pgType := c.Type
		if c.Array {
			pgType += "[]"
		}
		t.Columns = append(t.Columns, Column{Name: c.Column, Field: field, Kind: kindOf(c.Type, c.TypeType), List: c.Array, NotNull: c.NotNull, PGType: pgType})
		t.byField[field] = &t.Columns[len(t.Columns)-1]
	}
	if len(t.Columns) == 0 {
		s.Skipped = append(s.Skipped, fmt.Sprintf("topic %s: no column has a GraphQL name", name))
		return nil
	}
	// Columns may have moved as the slice grew.
	for i := range t.Columns {
		t.byField[t.Columns[i].Field] = &t.Columns[i]
	}
	typeTaken[typeName] = true
	return t
}

// sdl writes the schema's text. Every name in it has been checked against
// graphqlName; descriptions carry only names the catalog gave, stripped of
// anything that could end a block string.
func sdl(topics []*Topic) string {
	var b strings.Builder
	b.WriteString(`"""Any JSON value: a json or jsonb column, or a type without a closer GraphQL match, as PostgreSQL's to_jsonb renders it."""
scalar JSON

"""A 64-bit integer (bigint), as a string of decimal digits: JavaScript numbers lose integers beyond 2^53."""
scalar BigInt

"""An arbitrary-precision number (numeric), as a string, so that no digit is lost."""
scalar BigFloat

type Query {
  """The relay topics this schema serves, one subscription field each."""
  topics: [String!]!
}
`)
	if len(topics) == 0 {
		return b.String()
	}
	b.WriteString("\ntype Subscription {\n")
	for _, t := range topics {
		fmt.Fprintf(&b, "  \"\"\"Rows inserted into %s (topic %s) that the subscriber may see, never its own. after: an event id (the id in a result's extensions) to resume after, with nothing lost or repeated.\"\"\"\n",
			safe(t.Source), safe(t.Name))
		fmt.Fprintf(&b, "  %s(after: String): %s!\n", t.Field, t.TypeName)
	}
	b.WriteString("}\n")
	for _, t := range topics {
		fmt.Fprintf(&b, "\n\"\"\"A row of %s.\"\"\"\ntype %s {\n", safe(t.Source), t.TypeName)
		for _, c := range t.Columns {
			typ := scalarOf[c.Kind]
			if c.List {
				typ = "[" + typ + "]"
			}
			if c.NotNull {
				typ += "!"
			}
			fmt.Fprintf(&b, "  \"\"\"Column %s (%s).\"\"\"\n  %s: %s\n", safe(c.Name), safe(c.PGType), c.Field, typ)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func safe(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < ' ' {
			return -1
		}
		return r
	}, s)
}

// Cache holds the schema, reloading it when it is older than maxAge, so that
// topics and columns added in SQL are served without a restart.
type Cache struct {
	q      Querier
	maxAge time.Duration
	onSkip func(reason string)

	mu     sync.Mutex
	s      *Schema
	loaded time.Time
}

// NewCache returns a cache over q. onSkip, if set, is told why a topic or
// column was left out, once per change of the schema.
func NewCache(q Querier, maxAge time.Duration, onSkip func(reason string)) *Cache {
	return &Cache{q: q, maxAge: maxAge, onSkip: onSkip}
}

// Get returns the schema, reloading it if it is stale. If a reload fails the
// last schema is kept for another maxAge; with none, the error is returned.
func (c *Cache) Get(ctx context.Context) (*Schema, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s != nil && time.Since(c.loaded) < c.maxAge {
		return c.s, nil
	}
	s, err := Load(ctx, c.q)
	if err != nil {
		if c.s != nil {
			c.loaded = time.Now()
			return c.s, nil
		}
		return nil, err
	}
	if c.onSkip != nil && (c.s == nil || c.s.SDL != s.SDL) {
		for _, r := range s.Skipped {
			c.onSkip(r)
		}
	}
	c.s, c.loaded = s, time.Now()
	return s, nil
}
