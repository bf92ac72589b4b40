// Package match indexes subscribers by the audience keys they listen to, so
// finding an event's recipients costs time in proportion to its recipients,
// not to the number of connected subscribers.
package match

import "hash/maphash"

// Keys are the audience keys a subscriber listens to, by topic.
type Keys map[string][]string

// Entry is one registered subscription in an Index.
type Entry[T any] struct {
	// Subscriber is the subscriber id; an event whose actor it is never
	// matches. It must not change while the entry is indexed (the index
	// keeps a hash of it).
	Subscriber string
	// Value is the caller's payload (typically the subscription).
	Value T

	// mark is the sequence number of the last event this entry was matched
	// for: an entry reached through several keys is visited once. Only
	// events whose audience reaches two or more buckets read it.
	mark uint64
	keys Keys
	// slots are where the entry sits in the buckets of its keys, so that
	// removing it costs O(keys), whatever the size of the buckets.
	slots []slot[T]
}

// Keys returns the keys the entry is indexed under. The caller must not
// modify them.
func (e *Entry[T]) Keys() Keys { return e.keys }

// slot is one position of an entry: bucket b, index pos in b.members.
type slot[T any] struct {
	b   *bucket[T]
	pos int
}

// member is one element of a bucket: the entry, which of its slots points
// back here (updated when a removal moves the member), and a hash of the
// entry's Subscriber. The hash lets Match reject the actor without reading
// the entry: walking a bucket then reads the contiguous members only, and the
// entry itself is first touched by the caller's fn. 16 bytes, four to a
// cache line.
type member[T any] struct {
	e    *Entry[T]
	slot int32
	sub  uint32
}

// bucket holds the entries listening to one key of one topic. A slice, not a
// set: matching walks contiguous memory, and removal swaps the last member
// into the hole.
type bucket[T any] struct {
	topic, key string
	members    []member[T]
}

// Index maps topic → key → entries. It is not safe for concurrent use: the
// owner serialises access.
type Index[T any] struct {
	topics map[string]map[string]*bucket[T]
	seq    uint64
	size   int
	// hashSubscriber hashes subscriber ids for member.sub. Tests replace it
	// to force collisions.
	hashSubscriber func(string) uint32
}

// New returns an empty index.
func New[T any]() *Index[T] {
	seed := maphash.MakeSeed()
	return &Index[T]{
		topics:         map[string]map[string]*bucket[T]{},
		hashSubscriber: func(s string) uint32 { return uint32(maphash.String(seed, s)) },
	}
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
	n := 0
	for _, ks := range keys {
		n += len(ks)
	}
	e.slots = make([]slot[T], 0, n)
	sub := ix.hashSubscriber(e.Subscriber)
	for topic, ks := range keys {
		byKey := ix.topics[topic]
		if byKey == nil {
			byKey = map[string]*bucket[T]{}
			ix.topics[topic] = byKey
		}
		for _, k := range ks {
			b := byKey[k]
			if b == nil {
				b = &bucket[T]{topic: topic, key: k}
				byKey[k] = b
			}
			if last := len(b.members) - 1; last >= 0 && b.members[last].e == e {
				// A key listed twice: e is already the bucket's last
				// member, as nothing else joined it during this Set. A
				// bucket holds an entry at most once, so walking one
				// bucket needs no dedup.
				continue
			}
			e.slots = append(e.slots, slot[T]{b: b, pos: len(b.members)})
			b.members = append(b.members, member[T]{e: e, slot: int32(len(e.slots) - 1), sub: sub})
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
	for _, s := range e.slots {
		b := s.b
		last := len(b.members) - 1
		moved := b.members[last]
		b.members[s.pos] = moved
		moved.e.slots[moved.slot].pos = s.pos
		b.members[last] = member[T]{}
		b.members = b.members[:last]
		switch {
		case last == 0:
			byKey := ix.topics[b.topic]
			delete(byKey, b.key)
			if len(byKey) == 0 {
				delete(ix.topics, b.topic)
			}
		case cap(b.members) > 64 && last < cap(b.members)/4:
			// Give memory back after a crowd of subscribers left a key.
			b.members = append([]member[T](nil), b.members...)
		}
	}
	e.slots = nil
}

// Match calls fn once for every entry that listens to topic under any of the
// audience keys, except entries of the actor. It allocates nothing. fn may
// Remove the entry it is given (the hub closes a subscription whose queue is
// full), but must not change the index otherwise.
func (ix *Index[T]) Match(topic string, audience []string, actor string, fn func(*Entry[T])) {
	byKey := ix.topics[topic]
	if byKey == nil {
		return
	}
	// Find the buckets before visiting any entry. Typically one audience key
	// has listeners (a location, a user): its entries are then distinct, as a
	// bucket holds an entry once, and need no dedup mark, so Match never
	// reads an entry. Only when two or more buckets are reached can an entry
	// be met twice, and only then is its mark read and written.
	var only *bucket[T]
	found := 0
	for _, k := range audience {
		if b := byKey[k]; b != nil {
			only = b
			found++
		}
	}
	if found == 0 {
		return
	}
	actorHash := ix.hashSubscriber(actor)
	if found == 1 {
		visit(only, actor, actorHash, 0, fn)
		return
	}
	ix.seq++
	for _, k := range audience {
		if b := byKey[k]; b != nil {
			visit(b, actor, actorHash, ix.seq, fn)
		}
	}
}

// visit calls fn for the members of b except the actor's and, if seq is not
// 0, except those already marked with seq, which it marks.
func visit[T any](b *bucket[T], actor string, actorHash uint32, seq uint64, fn func(*Entry[T])) {
	for i := 0; i < len(b.members); {
		m := b.members[i]
		// The entry is read only on a hash hit: the actor, or a collision.
		if m.sub != actorHash || m.e.Subscriber != actor {
			switch {
			case seq == 0:
				fn(m.e)
			case m.e.mark != seq:
				m.e.mark = seq
				fn(m.e)
			}
		}
		// If fn removed the entry, the bucket's last member now sits at i
		// and has not been visited yet.
		if i < len(b.members) && b.members[i].e == m.e {
			i++
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
