package graphql

import (
	"strconv"
	"strings"
	"sync"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
)

// Clients of one app usually run the same subscription, so one event goes to
// many operations with the same selection. A shape is such a selection,
// shared by the operations that have it; it keeps the encoding of the last
// event, so that an event is encoded once per selection rather than once
// per subscriber. Only selections shared by two operations or more keep
// one, and only up to maxSharedResult bytes: what a shape holds is bounded
// by the operations that use it.
type shape struct {
	key  string
	refs int // guarded by shapes.mu

	mu   sync.Mutex
	id   eventlog.ID
	body []byte // nil: nothing kept
}

// maxSharedResult bounds the result a shape keeps.
const maxSharedResult = 64 << 10

// shapes are the selections of the running operations of one relay.
type shapes struct {
	mu sync.Mutex
	m  map[string]*shape
}

// acquire returns the shape of op's selection, counting op as a user.
func (s *shapes) acquire(op *operation) *shape {
	key := op.shapeKey()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*shape{}
	}
	sh := s.m[key]
	if sh == nil {
		sh = &shape{key: key}
		s.m[key] = sh
	}
	sh.refs++
	return sh
}

// release forgets op's use of sh; the last user drops it.
func (s *shapes) release(sh *shape) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh.refs--
	if sh.refs == 0 {
		delete(s.m, sh.key)
	}
}

func (s *shapes) shared(sh *shape) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sh.refs > 1
}

// shapeKey says what determines the encoding of an event: the topic, the
// root field's response key, and each selected field's key and column (with
// how it is serialised).
func (op *operation) shapeKey() string {
	var b strings.Builder
	b.WriteString(op.Topic.Name)
	b.WriteByte(0)
	b.WriteString(op.key)
	for _, f := range op.fields {
		b.WriteByte(0)
		b.WriteString(f.key)
		b.WriteByte('=')
		if f.col == nil {
			b.WriteString("__typename:" + f.typename)
			continue
		}
		b.WriteString(f.col.Name)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(int(f.col.Kind)))
		if f.col.List {
			b.WriteString("[]")
		}
	}
	return b.String()
}

// encode appends the result for m to dst, from the shape's copy when the
// shape has just encoded the same event: an event id names one row for
// good, so live and replayed copies of an event encode alike.
func (op *operation) encode(dst []byte, m *hub.Message, sh *shape, all *shapes) ([]byte, error) {
	if sh == nil {
		return op.result(dst, m)
	}
	sh.mu.Lock()
	if sh.body != nil && sh.id == m.ID {
		dst = append(dst, sh.body...)
		sh.mu.Unlock()
		return dst, nil
	}
	sh.mu.Unlock()
	start := len(dst)
	dst, err := op.result(dst, m)
	if err != nil {
		return dst, err
	}
	if body := dst[start:]; len(body) <= maxSharedResult && all.shared(sh) {
		sh.mu.Lock()
		sh.id, sh.body = m.ID, append(sh.body[:0], body...)
		sh.mu.Unlock()
	}
	return dst, nil
}
