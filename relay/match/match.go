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

// slot is one position of an entry: in table t, the bucket of key (whose
// hash is kept to find it again without rehashing), at index pos of its
// members.
type slot[T any] struct {
	t    *table[T]
	key  string
	hash uint64
	pos  int
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
// into the hole. Buckets live in their table's array, not behind pointers,
// so that finding an event's recipients reads the table slot, then the
// members: two cache misses on a large index.
type bucket[T any] struct {
	// hash is the key's hash, or hashEmpty or hashRemoved; a key's hash is
	// never either (see Index.hashKey).
	hash    uint64
	key     string
	members []member[T]
	// short holds a copy of a key of up to 16 bytes, so that comparing it
	// reads the bucket's cache line only, not the key's bytes elsewhere in
	// the heap. It makes a bucket 64 bytes: one cache line.
	short [16]byte
}

// hasKey reports whether b's key is key.
func (b *bucket[T]) hasKey(key string) bool {
	if len(key) != len(b.key) {
		return false
	}
	if len(key) <= len(b.short) {
		return string(b.short[:len(key)]) == key
	}
	return b.key == key
}

const (
	hashEmpty   = 0 // never used: ends a probe
	hashRemoved = 1 // a tombstone: its key left, probes continue past it
)

// table maps the keys of one topic to their buckets: open addressing with
// linear probing, so that a lookup reads one or two adjacent slots rather
// than chasing a map's pointers to a bucket and from there to the members.
//
// Removing a key leaves a tombstone instead of moving later buckets back, so
// that buckets never move while Match walks them (fn may Remove entries, and
// with them empty buckets). Only rehash moves buckets; it runs on insertion
// (never during Match, which must not Set) or, outside Match, on a removal
// that leaves the table mostly empty.
type table[T any] struct {
	topic   string
	buckets []bucket[T] // a power of two of them
	live    int         // buckets holding a key
	used    int         // live buckets and tombstones
}

// maxLoad is the share of a table's buckets that may be used (live or
// tombstones) before an insertion rehashes: linear probing stays short
// below it (2.5 buckets per lookup of a present key at worst, each bucket one
// cache line, adjacent ones prefetched together).
const maxLoadNum, maxLoadDen = 3, 4

func newTable[T any](topic string) *table[T] {
	return &table[T]{topic: topic, buckets: make([]bucket[T], 8)}
}

// find returns key's bucket, or nil.
func (t *table[T]) find(key string, hash uint64) *bucket[T] {
	mask := uint64(len(t.buckets) - 1)
	for i := hash & mask; ; i = (i + 1) & mask {
		b := &t.buckets[i]
		if b.hash == hash && b.hasKey(key) {
			return b
		}
		if b.hash == hashEmpty {
			return nil
		}
	}
}

// insert returns key's bucket, adding an empty one if key has none.
func (t *table[T]) insert(key string, hash uint64) *bucket[T] {
	if b := t.find(key, hash); b != nil {
		return b
	}
	if (t.used+1)*maxLoadDen > len(t.buckets)*maxLoadNum {
		t.rehash(t.live + 1)
	}
	mask := uint64(len(t.buckets) - 1)
	for i := hash & mask; ; i = (i + 1) & mask {
		b := &t.buckets[i]
		if b.hash == hashEmpty || b.hash == hashRemoved {
			if b.hash == hashEmpty {
				t.used++
			}
			t.live++
			b.hash, b.key = hash, key
			if len(key) <= len(b.short) {
				copy(b.short[:], key)
			}
			return b
		}
	}
}

// delete leaves a tombstone in place of b, which must be empty of members.
func (t *table[T]) delete(b *bucket[T]) {
	*b = bucket[T]{hash: hashRemoved}
	t.live--
}

// rehash moves the buckets into a new array sized for n keys at no more
// than two thirds of the maximum load (so another n/2 keys fit before the
// next rehash), dropping tombstones. It may shrink the table.
func (t *table[T]) rehash(n int) {
	size := 8
	for size*maxLoadNum*2 < n*maxLoadDen*3 {
		size *= 2
	}
	old := t.buckets
	t.buckets = make([]bucket[T], size)
	t.used = t.live
	mask := uint64(size - 1)
	for _, ob := range old {
		if ob.hash == hashEmpty || ob.hash == hashRemoved {
			continue
		}
		i := ob.hash & mask
		for t.buckets[i].hash != hashEmpty {
			i = (i + 1) & mask
		}
		t.buckets[i] = ob
	}
}

// Index maps topic → key → entries. It is not safe for concurrent use: the
// owner serialises access.
type Index[T any] struct {
	topics map[string]*table[T]
	seed   maphash.Seed
	seq    uint64
	size   int
	// matching is set while Match runs, when removals must not rehash a
	// table. (If fn panics it stays set until the next Match ends, which
	// only delays shrinking.)
	matching bool
	// hashSubscriber hashes subscriber ids for member.sub. Tests replace it
	// to force collisions.
	hashSubscriber func(string) uint32
}

// New returns an empty index.
func New[T any]() *Index[T] {
	seed := maphash.MakeSeed()
	return &Index[T]{
		topics:         map[string]*table[T]{},
		seed:           seed,
		hashSubscriber: func(s string) uint32 { return uint32(maphash.String(seed, s)) },
	}
}

// hashKey hashes an audience key for the tables, never to hashEmpty or
// hashRemoved.
func (ix *Index[T]) hashKey(key string) uint64 {
	return maphash.String(ix.seed, key) | 2
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
		if len(ks) == 0 {
			continue
		}
		t := ix.topics[topic]
		if t == nil {
			t = newTable[T](topic)
			ix.topics[topic] = t
		}
		for _, k := range ks {
			hash := ix.hashKey(k)
			b := t.insert(k, hash)
			if last := len(b.members) - 1; last >= 0 && b.members[last].e == e {
				// A key listed twice: e is already the bucket's last
				// member, as nothing else joined it during this Set. A
				// bucket holds an entry at most once, so walking one
				// bucket needs no dedup.
				continue
			}
			e.slots = append(e.slots, slot[T]{t: t, key: k, hash: hash, pos: len(b.members)})
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
		t := s.t
		b := t.find(s.key, s.hash)
		last := len(b.members) - 1
		moved := b.members[last]
		b.members[s.pos] = moved
		moved.e.slots[moved.slot].pos = s.pos
		b.members[last] = member[T]{}
		b.members = b.members[:last]
		switch {
		case last == 0:
			t.delete(b)
			switch {
			case t.live == 0:
				delete(ix.topics, t.topic)
			case !ix.matching && len(t.buckets) > 64 && t.live*maxLoadDen*8 < len(t.buckets)*maxLoadNum:
				// Give memory back after most keys of a topic left.
				t.rehash(t.live)
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
	t := ix.topics[topic]
	if t == nil {
		return
	}
	// Find the buckets before visiting any entry. Typically one audience key
	// has listeners (a location, a user): its entries are then distinct, as a
	// bucket holds an entry once, and need no dedup mark, so Match never
	// reads an entry. Only when two or more buckets are reached can an entry
	// be met twice, and only then is its mark read and written. The first
	// few buckets found are kept so as not to look them up again.
	var buckets [4]*bucket[T]
	found := 0
	for _, k := range audience {
		if b := t.find(k, ix.hashKey(k)); b != nil {
			if found < len(buckets) {
				buckets[found] = b
			}
			found++
		}
	}
	if found == 0 {
		return
	}
	actorHash := ix.hashSubscriber(actor)
	ix.matching = true
	switch {
	case found == 1:
		visit(buckets[0], actor, actorHash, 0, fn)
	case found <= len(buckets):
		ix.seq++
		for _, b := range buckets[:found] {
			visit(b, actor, actorHash, ix.seq, fn)
		}
	default:
		ix.seq++
		for _, k := range audience {
			if b := t.find(k, ix.hashKey(k)); b != nil {
				visit(b, actor, actorHash, ix.seq, fn)
			}
		}
	}
	ix.matching = false
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
		// and has not been visited yet. (The bucket itself stays where it
		// is: removals do not rehash during Match.)
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
