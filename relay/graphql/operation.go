package graphql

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"github.com/vektah/gqlparser/v2/validator"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/graphql/schema"
	"github.com/pgrelay/pgrelay/relay/hub"
)

// request is the payload of a subscribe (graphql-transport-ws) or start
// (graphql-ws) message.
type request struct {
	Query         string         `json:"query"`
	OperationName string         `json:"operationName"`
	Variables     map[string]any `json:"variables"`
}

// operation is a validated request: a query, answered at once (Result), or
// a subscription to one topic.
type operation struct {
	// Result is the whole answer of a query.
	Result []byte
	// For a subscription:
	Topic *schema.Topic
	After *eventlog.ID
	key   string // the root field's response key
	// fields are the selected fields of the topic's type, in order.
	fields []projected
}

// projected is one selected field of a row.
type projected struct {
	key      string
	typename string         // set for __typename
	col      *schema.Column // set for a column
}

// compile parses and validates req against s. A document that is not valid
// gets the GraphQL errors a client shows (with locations); a valid query is
// executed at once.
func compile(s *schema.Schema, req request) (*operation, gqlerror.List) {
	doc, errs := gqlparser.LoadQueryWithRules(s.AST, req.Query, nil)
	if len(errs) > 0 {
		return nil, errs
	}
	op := doc.Operations.ForName(req.OperationName)
	if op == nil {
		if req.OperationName == "" {
			return nil, gqlerror.List{gqlerror.Errorf("the document has several operations: name one with operationName")}
		}
		return nil, gqlerror.List{gqlerror.Errorf("the document has no operation named %q", req.OperationName)}
	}
	vars, err := validator.VariableValues(s.AST, op, req.Variables)
	if err != nil {
		var ge *gqlerror.Error
		if errors.As(err, &ge) {
			return nil, gqlerror.List{ge}
		}
		return nil, gqlerror.List{gqlerror.Errorf("variables: %v", err)}
	}
	switch op.Operation {
	case ast.Query:
		ex := &executor{s: s, vars: vars, fragments: doc.Fragments}
		result, err := ex.query(op.SelectionSet)
		if err != nil {
			return nil, gqlerror.List{gqlerror.ErrorPosf(op.Position, "%v", err)}
		}
		return &operation{Result: result}, nil
	case ast.Subscription:
		return compileSubscription(s, op, vars, doc.Fragments)
	default:
		return nil, gqlerror.List{gqlerror.ErrorPosf(op.Position, "this schema has no %s operations", op.Operation)}
	}
}

func compileSubscription(s *schema.Schema, op *ast.OperationDefinition, vars map[string]any, frags ast.FragmentDefinitionList) (*operation, gqlerror.List) {
	groups := collect(op.SelectionSet, "Subscription", vars, frags)
	if len(groups) != 1 {
		// The validator's single-root-field rule makes this unreachable
		// but for @skip on the one field.
		return nil, gqlerror.List{gqlerror.ErrorPosf(op.Position, "a subscription selects exactly one field")}
	}
	root := groups[0].fields[0]
	t := s.Topics[root.Name]
	if t == nil {
		return nil, gqlerror.List{gqlerror.ErrorPosf(root.Position, "%s is not a subscription field", root.Name)}
	}
	out := &operation{Topic: t, key: groups[0].key}
	if v, ok := root.ArgumentMap(vars)["after"]; ok && v != nil {
		raw, _ := v.(string)
		id, err := eventlog.ParseID(raw)
		if err != nil {
			e := gqlerror.ErrorPosf(argPosition(root, "after"), "after: %v (use the id in a result's extensions)", err)
			e.Path = ast.Path{ast.PathName(out.key)}
			e.Extensions = map[string]any{"code": "BAD_USER_INPUT"}
			return nil, gqlerror.List{e}
		}
		out.After = &id
	}
	var sel ast.SelectionSet
	for _, f := range groups[0].fields {
		sel = append(sel, f.SelectionSet...)
	}
	for _, g := range collect(sel, t.TypeName, vars, frags) {
		p := projected{key: g.key}
		if g.fields[0].Name == "__typename" {
			p.typename = t.TypeName
		} else {
			p.col = t.Column(g.fields[0].Name)
		}
		out.fields = append(out.fields, p)
	}
	return out, nil
}

func argPosition(f *ast.Field, name string) *ast.Position {
	if a := f.Arguments.ForName(name); a != nil {
		return a.Position
	}
	return f.Position
}

// group is the fields of one response key.
type group struct {
	key    string
	fields []*ast.Field
}

// collect gathers the fields a selection set selects on an object of type
// typeName, by response key, in order, following fragments and honouring
// @skip and @include (CollectFields in the GraphQL spec).
func collect(sel ast.SelectionSet, typeName string, vars map[string]any, frags ast.FragmentDefinitionList) []group {
	var out []group
	index := map[string]int{}
	visited := map[string]bool{}
	var walk func(ast.SelectionSet)
	walk = func(sel ast.SelectionSet) {
		for _, s := range sel {
			switch s := s.(type) {
			case *ast.Field:
				if !included(s.Directives, vars) {
					continue
				}
				key := s.Alias
				if key == "" {
					key = s.Name
				}
				if i, ok := index[key]; ok {
					out[i].fields = append(out[i].fields, s)
					continue
				}
				index[key] = len(out)
				out = append(out, group{key: key, fields: []*ast.Field{s}})
			case *ast.InlineFragment:
				if included(s.Directives, vars) && (s.TypeCondition == "" || s.TypeCondition == typeName) {
					walk(s.SelectionSet)
				}
			case *ast.FragmentSpread:
				if visited[s.Name] || !included(s.Directives, vars) {
					continue
				}
				visited[s.Name] = true
				if f := frags.ForName(s.Name); f != nil && f.TypeCondition == typeName {
					walk(f.SelectionSet)
				}
			}
		}
	}
	walk(sel)
	return out
}

// included applies @skip(if:) and @include(if:).
func included(ds ast.DirectiveList, vars map[string]any) bool {
	if d := ds.ForName("skip"); d != nil {
		if v, _ := d.ArgumentMap(vars)["if"].(bool); v {
			return false
		}
	}
	if d := ds.ForName("include"); d != nil {
		if v, _ := d.ArgumentMap(vars)["if"].(bool); !v {
			return false
		}
	}
	return true
}

// errRow means an event's payload is not a JSON object: the log holds only
// rows written by the capture trigger, so this is the relay's failure.
var errRow = errors.New("event payload is not a JSON object")

// result appends the execution result of the subscription for one event to
// dst: {"data":{"<key>":{…selected fields…}},"extensions":{"id":"<event id>"}}.
// Response keys are GraphQL names and event ids are hex and '-': neither
// needs escaping.
func (op *operation) result(dst []byte, m *hub.Message) ([]byte, error) {
	var row map[string]json.RawMessage
	if err := json.Unmarshal(m.Payload, &row); err != nil || row == nil {
		return dst, fmt.Errorf("%w: event %s", errRow, m.ID)
	}
	dst = append(dst, `{"data":{"`...)
	dst = append(dst, op.key...)
	dst = append(dst, `":{`...)
	for i, f := range op.fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, f.key...)
		dst = append(dst, `":`...)
		if f.col == nil {
			dst = appendString(dst, f.typename)
			continue
		}
		dst = appendValue(dst, row[f.col.Name], f.col.Kind, f.col.List)
	}
	dst = append(dst, `}},"extensions":{"id":"`...)
	dst = append(dst, m.ID.String()...)
	dst = append(dst, `"}}`...)
	return dst, nil
}

// resetResult tells a client that resumed from before what the log retains
// that events were lost: a result with an error, whose extensions say where
// the subscription now continues.
func (op *operation) resetResult(dst []byte, at eventlog.ID) []byte {
	dst = append(dst, `{"data":null,"errors":[{"message":"events after your last id are no longer retained; reload","path":["`...)
	dst = append(dst, op.key...)
	dst = append(dst, `"],"extensions":{"code":"RESET"}}],"extensions":{"id":"`...)
	dst = append(dst, at.String()...)
	dst = append(dst, `","reset":true}}`...)
	return dst
}

// appendValue appends a column's value as its GraphQL type serialises it.
func appendValue(dst []byte, v json.RawMessage, k schema.Kind, list bool) []byte {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return append(dst, "null"...)
	}
	if list {
		var elems []json.RawMessage
		if json.Unmarshal(v, &elems) != nil {
			return append(dst, "null"...)
		}
		dst = append(dst, '[')
		for i, e := range elems {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendValue(dst, e, k, false)
		}
		return append(dst, ']')
	}
	switch k {
	case schema.Int, schema.Float, schema.Boolean:
		// A float column's NaN and infinities arrive as strings.
		if v[0] == '"' {
			return append(dst, "null"...)
		}
		return append(dst, v...)
	case schema.String, schema.BigInt, schema.BigFloat:
		if v[0] == '"' {
			return append(dst, v...)
		}
		return appendString(dst, string(v))
	default: // JSON
		return append(dst, v...)
	}
}

// appendString appends s as a JSON string.
func appendString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}
