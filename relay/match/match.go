// Package match indexes subscribers by the audience keys they listen to, so
// finding an event's recipients costs time in proportion to its recipients,
// not to the number of connected subscribers.
package match

// Keys are the audience keys a subscriber listens to, by topic.
type Keys map[string][]string

// Entry is one registered subscription in an Index.
type Entry[T any] struct {
	// Subscriber is the subscriber id; an event whose actor it is never
	// matches.
	Subscriber string
	// Value is the caller's payload (typically the subscription).
	Value T

	keys Keys
	// mark is the sequence number of the last event this entry was matched
	// for: an entry reached through several keys is visited once.
	mark uint64
}

// Keys returns the keys the entry is indexed under. The caller must not
// modify them.
func (e *Entry[T]) Keys() Keys { return e.keys }

// Index maps topic → key → entries. It is not safe for concurrent use: the
// owner serialises access.
type Index[T any] struct {
	topics map[string]map[string]map[*Entry[T]]struct{}
	seq    uint64
	size   int
}

// New returns an empty index.
func New[T any]() *Index[T] {
	return &Index[T]{topics: map[string]map[string]map[*Entry[T]]struct{}{}}
}

// Len returns the number of entries in the index.
func (ix *Index[T]) Len() int { return ix.size }

// Set indexes e under keys, replacing whatever keys it had.
func (ix *Index[T]) Set(e *Entry[T], keys Keys) {
	if e.keys != nil {
		ix.remove(e)
	} else {
		ix.size++
	}
	if keys == nil {
		keys = Keys{}
	}
	e.keys = keys
	for topic, ks := range keys {
		byKey := ix.topics[topic]
		if byKey == nil {
			byKey = map[string]map[*Entry[T]]struct{}{}
			ix.topics[topic] = byKey
		}
		for _, k := range ks {
			set := byKey[k]
			if set == nil {
				set = map[*Entry[T]]struct{}{}
				byKey[k] = set
			}
			set[e] = struct{}{}
		}
	}
}

// Remove takes e out of the index.
func (ix *Index[T]) Remove(e *Entry[T]) {
	if e.keys == nil {
		return
	}
	ix.remove(e)
	e.keys = nil
	ix.size--
}

func (ix *Index[T]) remove(e *Entry[T]) {
	for topic, ks := range e.keys {
		byKey := ix.topics[topic]
		for _, k := range ks {
			set := byKey[k]
			delete(set, e)
			if len(set) == 0 {
				delete(byKey, k)
			}
		}
		if len(byKey) == 0 {
			delete(ix.topics, topic)
		}
	}
}

// Match calls fn once for every entry that listens to topic under any of the
// audience keys, except entries of the actor. It allocates nothing.
func (ix *Index[T]) Match(topic string, audience []string, actor string, fn func(*Entry[T])) {
	byKey := ix.topics[topic]
	if byKey == nil {
		return
	}
	ix.seq++
	for _, k := range audience {
		for e := range byKey[k] {
			if e.mark == ix.seq || e.Subscriber == actor {
				continue
			}
			e.mark = ix.seq
			fn(e)
		}
	}
}

// Matches reports whether keys select an event of topic with the given
// audience and actor, for subscriber: the same rule as Match, for one
// subscriber (used to filter replays from the log).
func Matches(keys Keys, subscriber, topic string, audience []string, actor string) bool {
	if subscriber == actor {
		return false
	}
	for _, k := range keys[topic] {
		for _, a := range audience {
			if k == a {
				return true
			}
		}
	}
	return false
}
