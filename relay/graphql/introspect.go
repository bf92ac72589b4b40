package graphql

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/vektah/gqlparser/v2/ast"

	"github.com/pgrelay/pgrelay/relay/graphql/schema"
)

// executor answers queries: the schema's one Query field (topics) and
// introspection (__schema, __type, __typename), which is what GraphiQL,
// Altair and codegen tools send. The values are the schema's own
// definitions, so an executor is a small walk over gqlparser's *ast.Schema:
// resolve a field of an object, then complete the value by the field's type.
type executor struct {
	s         *schema.Schema
	vars      map[string]any
	fragments ast.FragmentDefinitionList
	// over is set once the result has passed maxQueryResult: a query can
	// repeat the whole schema under many aliases, and what it asks for is
	// built in memory.
	over bool
}

// maxQueryResult bounds the result of one query. The whole schema of a
// relay with a few dozen topics is a few tens of KiB.
const maxQueryResult = 1 << 20

// errQueryTooLarge refuses a query whose result would pass maxQueryResult.
var errQueryTooLarge = fmt.Errorf("the result of this query would exceed %d bytes", maxQueryResult)

// object is an introspection value with fields.
type object interface {
	typeName() string
	field(e *executor, name string, args map[string]any) any
}

// query executes a query's selection set and returns {"data":{…}}.
func (e *executor) query(sel ast.SelectionSet) ([]byte, error) {
	dst := []byte(`{"data":`)
	dst = e.object(dst, queryRoot{}, sel)
	if e.over {
		return nil, errQueryTooLarge
	}
	return append(dst, '}'), nil
}

func (e *executor) object(dst []byte, obj object, sel ast.SelectionSet) []byte {
	if len(dst) > maxQueryResult {
		e.over = true
	}
	if e.over {
		return dst
	}
	dst = append(dst, '{')
	for i, g := range collect(sel, obj.typeName(), e.vars, e.fragments) {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, g.key)
		dst = append(dst, ':')
		f := g.fields[0]
		if f.Name == "__typename" {
			dst = appendString(dst, obj.typeName())
			continue
		}
		var sub ast.SelectionSet
		for _, f := range g.fields {
			sub = append(sub, f.SelectionSet...)
		}
		v := obj.field(e, f.Name, f.ArgumentMap(e.vars))
		dst = e.complete(dst, v, sub)
	}
	return append(dst, '}')
}

// complete writes a resolved value: null, a leaf, a list or an object.
func (e *executor) complete(dst []byte, v any, sel ast.SelectionSet) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...)
	case object:
		return e.object(dst, v, sel)
	case []any:
		dst = append(dst, '[')
		for i, x := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = e.complete(dst, x, sel)
		}
		return append(dst, ']')
	default:
		b, _ := json.Marshal(v)
		return append(dst, b...)
	}
}

// str is a description or other optional string: null when empty.
func str(s string) any {
	if s == "" {
		return nil
	}
	return s
}

type queryRoot struct{}

func (queryRoot) typeName() string { return "Query" }

func (queryRoot) field(e *executor, name string, args map[string]any) any {
	switch name {
	case "__schema":
		return schemaObj{}
	case "__type":
		n, _ := args["name"].(string)
		if d := e.s.AST.Types[n]; d != nil {
			return typeObj{def: d}
		}
		return nil
	case "topics":
		var out []any
		for _, t := range e.s.TopicNames() {
			out = append(out, t)
		}
		return list(out)
	}
	return nil
}

// list keeps an empty list from being written as null.
func list(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

type schemaObj struct{}

func (schemaObj) typeName() string { return "__Schema" }

func (schemaObj) field(e *executor, name string, _ map[string]any) any {
	s := e.s.AST
	named := func(d *ast.Definition) any {
		if d == nil {
			return nil
		}
		return typeObj{def: d}
	}
	switch name {
	case "description":
		return str(s.Description)
	case "types":
		names := make([]string, 0, len(s.Types))
		for n := range s.Types {
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([]any, 0, len(names))
		for _, n := range names {
			out = append(out, typeObj{def: s.Types[n]})
		}
		return out
	case "queryType":
		return named(s.Query)
	case "mutationType":
		return named(s.Mutation)
	case "subscriptionType":
		return named(s.Subscription)
	case "directives":
		names := make([]string, 0, len(s.Directives))
		for n := range s.Directives {
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([]any, 0, len(names))
		for _, n := range names {
			out = append(out, directiveObj{s.Directives[n]})
		}
		return out
	}
	return nil
}

// typeObj is a __Type: a named definition, or a list or non-null wrapper of
// another type.
type typeObj struct {
	def  *ast.Definition
	kind string // "LIST" or "NON_NULL" for a wrapper
	of   *typeObj
}

// typeOf is the __Type of a type reference.
func typeOf(s *ast.Schema, t *ast.Type) typeObj {
	if t.NonNull {
		inner := *t
		inner.NonNull = false
		of := typeOf(s, &inner)
		return typeObj{kind: "NON_NULL", of: &of}
	}
	if t.Elem != nil {
		of := typeOf(s, t.Elem)
		return typeObj{kind: "LIST", of: &of}
	}
	return typeObj{def: s.Types[t.NamedType]}
}

func (typeObj) typeName() string { return "__Type" }

func (t typeObj) field(e *executor, name string, args map[string]any) any {
	if t.def == nil {
		switch name {
		case "kind":
			return t.kind
		case "ofType":
			if t.of == nil {
				return nil
			}
			return *t.of
		case "fields", "interfaces", "possibleTypes", "enumValues", "inputFields", "isOneOf":
			return nil
		}
		return nil
	}
	d := t.def
	withDeprecated, _ := args["includeDeprecated"].(bool)
	switch name {
	case "kind":
		return string(d.Kind)
	case "name":
		return d.Name
	case "description":
		return str(d.Description)
	case "specifiedByURL":
		if dir := d.Directives.ForName("specifiedBy"); dir != nil {
			if u := dir.Arguments.ForName("url"); u != nil {
				return u.Value.Raw
			}
		}
		return nil
	case "fields":
		if d.Kind != ast.Object && d.Kind != ast.Interface {
			return nil
		}
		var out []any
		for _, f := range d.Fields {
			if strings.HasPrefix(f.Name, "__") || (!withDeprecated && deprecated(f.Directives) != nil) {
				continue
			}
			out = append(out, fieldObj{f})
		}
		return list(out)
	case "interfaces":
		if d.Kind != ast.Object && d.Kind != ast.Interface {
			return nil
		}
		var out []any
		for _, n := range d.Interfaces {
			out = append(out, typeObj{def: e.s.AST.Types[n]})
		}
		return list(out)
	case "possibleTypes":
		if d.Kind != ast.Interface && d.Kind != ast.Union {
			return nil
		}
		var out []any
		for _, p := range e.s.AST.GetPossibleTypes(d) {
			out = append(out, typeObj{def: p})
		}
		return list(out)
	case "enumValues":
		if d.Kind != ast.Enum {
			return nil
		}
		var out []any
		for _, v := range d.EnumValues {
			if withDeprecated || deprecated(v.Directives) == nil {
				out = append(out, enumValueObj{v})
			}
		}
		return list(out)
	case "inputFields":
		if d.Kind != ast.InputObject {
			return nil
		}
		var out []any
		for _, f := range d.Fields {
			if withDeprecated || deprecated(f.Directives) == nil {
				out = append(out, inputValueObj{f.Name, f.Description, f.Type, f.DefaultValue, f.Directives})
			}
		}
		return list(out)
	case "isOneOf":
		return d.Kind == ast.InputObject && d.Directives.ForName("oneOf") != nil
	}
	return nil
}

// deprecated returns the @deprecated directive of a definition, if any.
func deprecated(ds ast.DirectiveList) *ast.Directive { return ds.ForName("deprecated") }

func deprecation(ds ast.DirectiveList, name string) any {
	d := deprecated(ds)
	switch name {
	case "isDeprecated":
		return d != nil
	case "deprecationReason":
		if d == nil {
			return nil
		}
		if r := d.Arguments.ForName("reason"); r != nil {
			return r.Value.Raw
		}
		return "No longer supported"
	}
	return nil
}

type fieldObj struct{ f *ast.FieldDefinition }

func (fieldObj) typeName() string { return "__Field" }

func (o fieldObj) field(e *executor, name string, args map[string]any) any {
	switch name {
	case "name":
		return o.f.Name
	case "description":
		return str(o.f.Description)
	case "args":
		return arguments(o.f.Arguments, args)
	case "type":
		return typeOf(e.s.AST, o.f.Type)
	}
	return deprecation(o.f.Directives, name)
}

func arguments(defs ast.ArgumentDefinitionList, args map[string]any) any {
	withDeprecated, _ := args["includeDeprecated"].(bool)
	var out []any
	for _, a := range defs {
		if withDeprecated || deprecated(a.Directives) == nil {
			out = append(out, inputValueObj{a.Name, a.Description, a.Type, a.DefaultValue, a.Directives})
		}
	}
	return list(out)
}

type inputValueObj struct {
	name, description string
	typ               *ast.Type
	def               *ast.Value
	directives        ast.DirectiveList
}

func (inputValueObj) typeName() string { return "__InputValue" }

func (o inputValueObj) field(e *executor, name string, _ map[string]any) any {
	switch name {
	case "name":
		return o.name
	case "description":
		return str(o.description)
	case "type":
		return typeOf(e.s.AST, o.typ)
	case "defaultValue":
		if o.def == nil {
			return nil
		}
		return o.def.String()
	}
	return deprecation(o.directives, name)
}

type enumValueObj struct{ v *ast.EnumValueDefinition }

func (enumValueObj) typeName() string { return "__EnumValue" }

func (o enumValueObj) field(_ *executor, name string, _ map[string]any) any {
	switch name {
	case "name":
		return o.v.Name
	case "description":
		return str(o.v.Description)
	}
	return deprecation(o.v.Directives, name)
}

type directiveObj struct{ d *ast.DirectiveDefinition }

func (directiveObj) typeName() string { return "__Directive" }

func (o directiveObj) field(_ *executor, name string, args map[string]any) any {
	switch name {
	case "name":
		return o.d.Name
	case "description":
		return str(o.d.Description)
	case "locations":
		out := make([]any, 0, len(o.d.Locations))
		for _, l := range o.d.Locations {
			out = append(out, string(l))
		}
		return out
	case "args":
		return arguments(o.d.Arguments, args)
	case "isRepeatable":
		return o.d.IsRepeatable
	}
	return nil
}
