package match

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"unsafe"
)

// matched returns the subscribers Match calls fn for, in call order.
func matched(ix *Index[int], topic string, audience []string, actor string) []string {
	var got []string
	ix.Match(topic, audience, actor, func(e *Entry[int]) { got = append(got, e.Subscriber) })
	return got
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestMatchReachesEveryListenerOfAnyAudienceKeyOnce(t *testing.T) {
	ix := New[int]()
	ix.Set(&Entry[int]{Subscriber: "zolo"}, Keys{"templates": {"location:1"}})
	ix.Set(&Entry[int]{Subscriber: "zewi"}, Keys{"templates": {"location:1", "location:2"}})
	ix.Set(&Entry[int]{Subscriber: "zowi"}, Keys{"templates": {"location:1", "location:2", "org:1"}})
	ix.Set(&Entry[int]{Subscriber: "other"}, Keys{"templates": {"location:9"}, "orders": {"location:1"}})

	tests := []struct {
		name     string
		topic    string
		audience []string
		actor    string
		want     []string
	}{
		{"one location", "templates", []string{"location:1"}, "", []string{"zewi", "zolo", "zowi"}},
		{"overlapping keys deliver once", "templates", []string{"location:1", "location:2", "org:1"}, "", []string{"zewi", "zolo", "zowi"}},
		{"the actor is skipped", "templates", []string{"location:1"}, "zewi", []string{"zolo", "zowi"}},
		{"keys are per topic", "orders", []string{"location:1"}, "", []string{"other"}},
		{"unknown topic", "nothing", []string{"location:1"}, "", nil},
		{"nobody listens", "templates", []string{"location:5"}, "", nil},
		{"empty audience", "templates", nil, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sorted(matched(ix, tc.topic, tc.audience, tc.actor)); !slices.Equal(got, tc.want) {
				t.Errorf("Match(%s, %v, actor %q) = %v, want %v", tc.topic, tc.audience, tc.actor, got, tc.want)
			}
		})
	}
}

func TestSetReplacesKeysAndRemoveForgets(t *testing.T) {
	ix := New[int]()
	e := &Entry[int]{Subscriber: "u"}
	ix.Set(e, Keys{"templates": {"a"}})
	ix.Set(e, Keys{"templates": {"b"}})
	if got := matched(ix, "templates", []string{"a"}, ""); got != nil {
		t.Errorf("after re-Set, old key a still matches %v", got)
	}
	if got := matched(ix, "templates", []string{"b"}, ""); !slices.Equal(got, []string{"u"}) {
		t.Errorf("new key b matches %v, want [u]", got)
	}
	if ix.Len() != 1 {
		t.Errorf("Len = %d after two Sets of one entry, want 1", ix.Len())
	}
	ix.Remove(e)
	ix.Remove(e) // a second Remove is a no-op
	if got := matched(ix, "templates", []string{"b"}, ""); got != nil {
		t.Errorf("after Remove, matches %v", got)
	}
	if ix.Len() != 0 {
		t.Errorf("Len = %d after Remove, want 0", ix.Len())
	}
	if len(ix.topics) != 0 {
		t.Errorf("an empty index still holds %d topics", len(ix.topics))
	}
}

func TestSetWithNilKeysRegistersAnEntryThatMatchesNothing(t *testing.T) {
	ix := New[int]()
	e := &Entry[int]{Subscriber: "u"}
	ix.Set(e, nil)
	if ix.Len() != 1 {
		t.Fatalf("Len = %d, want 1", ix.Len())
	}
	if e.Keys() == nil {
		t.Errorf("Keys() = nil for a registered entry, want empty keys")
	}
	ix.Remove(e)
	if ix.Len() != 0 {
		t.Errorf("Len = %d after Remove, want 0", ix.Len())
	}
}

func TestDuplicateKeysOfOneEntryDeliverOnceAndRemoveCleanly(t *testing.T) {
	ix := New[int]()
	e := &Entry[int]{Subscriber: "u"}
	f := &Entry[int]{Subscriber: "v"}
	ix.Set(e, Keys{"templates": {"a", "a", "b", "a"}})
	ix.Set(f, Keys{"templates": {"a"}})
	if got := sorted(matched(ix, "templates", []string{"a", "b"}, "")); !slices.Equal(got, []string{"u", "v"}) {
		t.Errorf("Match = %v, want [u v]", got)
	}
	ix.Remove(e)
	if got := matched(ix, "templates", []string{"a", "b"}, ""); !slices.Equal(got, []string{"v"}) {
		t.Errorf("after removing u, Match = %v, want [v]", got)
	}
}

// TestIndexAgreesWithAModelUnderRandomChanges checks the index against a
// plain map model through many random Set and Remove calls: whatever the
// order of changes, Match finds exactly the entries the model says.
func TestIndexAgreesWithAModelUnderRandomChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	const entries, keySpace = 200, 30
	ix := New[int]()
	all := make([]*Entry[int], entries)
	model := make(map[*Entry[int]][]string) // registered entries' keys of topic "t"
	for i := range all {
		all[i] = &Entry[int]{Subscriber: "s" + strconv.Itoa(i), Value: i}
	}
	for step := range 20_000 {
		e := all[rng.IntN(entries)]
		if rng.IntN(4) == 0 {
			ix.Remove(e)
			delete(model, e)
		} else {
			keys := make([]string, rng.IntN(5))
			for k := range keys {
				keys[k] = key(rng.IntN(keySpace))
			}
			ix.Set(e, Keys{"t": keys})
			model[e] = keys
		}
		if ix.Len() != len(model) {
			t.Fatalf("step %d: Len = %d, want %d", step, ix.Len(), len(model))
		}
		audience := []string{key(rng.IntN(keySpace)), key(rng.IntN(keySpace))}
		actor := all[rng.IntN(entries)].Subscriber
		var want []string
		for m, keys := range model {
			if m.Subscriber != actor && Matches(Keys{"t": keys}, m.Subscriber, "t", audience, actor) {
				want = append(want, m.Subscriber)
			}
		}
		// Now and then fn removes some of the entries it is given, as the
		// hub does with slow consumers: every recipient is still visited
		// once.
		removing := rng.IntN(8) == 0
		var got []string
		ix.Match("t", audience, actor, func(e *Entry[int]) {
			got = append(got, e.Subscriber)
			if removing && e.Value%2 == 0 {
				ix.Remove(e)
				delete(model, e)
			}
		})
		if slices.Sort(got); !slices.Equal(got, sorted(want)) {
			t.Fatalf("step %d: Match(%v, actor %s) = %v, want %v", step, audience, actor, got, sorted(want))
		}
	}
}

// key returns the model test's key i: short ones, kept inside the table's
// buckets, and long ones sharing a prefix longer than that copy.
func key(i int) string {
	if i%3 == 0 {
		return "a-key-longer-than-sixteen-bytes:" + strconv.Itoa(i)
	}
	return "k" + strconv.Itoa(i)
}

func TestMatchDoesNotAllocate(t *testing.T) {
	ix, keys := benchIndex(10_000, 10)
	audience := []string{keys[3], "org:nobody"}
	n := 0
	allocs := testing.AllocsPerRun(100, func() {
		ix.Match("templates", audience, "", func(*Entry[int]) { n++ })
	})
	if allocs != 0 {
		t.Errorf("Match allocates %.1f times per event, want 0", allocs)
	}
	if n != 101*10 {
		t.Errorf("delivered %d, want %d", n, 101*10)
	}
}

func TestMatchToleratesFnRemovingTheEntryItWasGiven(t *testing.T) {
	ix := New[int]()
	var entries []*Entry[int]
	for i := range 10 {
		e := &Entry[int]{Subscriber: "s" + strconv.Itoa(i)}
		ix.Set(e, Keys{"t": {"a", "b"}})
		entries = append(entries, e)
	}
	var got []string
	ix.Match("t", []string{"a", "b"}, "", func(e *Entry[int]) {
		got = append(got, e.Subscriber)
		if e.Subscriber[1]%2 == 0 {
			ix.Remove(e) // as the hub does with a subscription whose queue is full
		}
	})
	want := make([]string, len(entries))
	for i, e := range entries {
		want[i] = e.Subscriber
	}
	if !slices.Equal(sorted(got), sorted(want)) {
		t.Errorf("with removals during Match, visited %v, want each of %v once", got, want)
	}
	if ix.Len() != 5 {
		t.Errorf("Len = %d after removing the even ones, want 5", ix.Len())
	}
	if got := sorted(matched(ix, "t", []string{"b"}, "")); !slices.Equal(got, []string{"s1", "s3", "s5", "s7", "s9"}) {
		t.Errorf("afterwards Match = %v, want the odd ones", got)
	}
}

// TestActorHashCollisionsStillCompareTheSubscriber forces every subscriber
// id to hash alike: the actor must still be told apart from the others by
// its full id, and nobody else lost.
func TestActorHashCollisionsStillCompareTheSubscriber(t *testing.T) {
	ix := New[int]()
	ix.hashSubscriber = func(string) uint32 { return 42 }
	for _, s := range []string{"a", "b", "c"} {
		ix.Set(&Entry[int]{Subscriber: s}, Keys{"t": {"k", "l"}})
	}
	for _, audience := range [][]string{{"k"}, {"k", "l"}} {
		if got := sorted(matched(ix, "t", audience, "b")); !slices.Equal(got, []string{"a", "c"}) {
			t.Errorf("Match(%v, actor b) with colliding hashes = %v, want [a c]", audience, got)
		}
		if got := sorted(matched(ix, "t", audience, "nobody")); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Errorf("Match(%v, actor nobody) with colliding hashes = %v, want [a b c]", audience, got)
		}
	}
}

// TestAKeyListedTwiceDeliversOnceThroughThatKeyAlone covers the path that
// skips the dedup mark: one audience key, whose bucket must hold each entry
// once however often the entry lists the key.
func TestAKeyListedTwiceDeliversOnceThroughThatKeyAlone(t *testing.T) {
	ix := New[int]()
	e := &Entry[int]{Subscriber: "u"}
	ix.Set(e, Keys{"t": {"a", "b", "a", "a"}})
	ix.Set(&Entry[int]{Subscriber: "v"}, Keys{"t": {"a"}})
	if got := sorted(matched(ix, "t", []string{"a"}, "")); !slices.Equal(got, []string{"u", "v"}) {
		t.Errorf("Match(a) = %v, want [u v]", got)
	}
	if got := sorted(matched(ix, "t", []string{"a", "a"}, "")); !slices.Equal(got, []string{"u", "v"}) {
		t.Errorf("Match(a, a) = %v, want [u v]", got)
	}
	ix.Remove(e)
	if got := matched(ix, "t", []string{"a", "b"}, ""); !slices.Equal(got, []string{"v"}) {
		t.Errorf("after removing u, Match = %v, want [v]", got)
	}
}

// TestTableProbesPastCollisionsAndTombstones gives keys one hash, so that
// they share a probe sequence: each is still found, also after others are
// removed from the middle of it.
func TestTableProbesPastCollisionsAndTombstones(t *testing.T) {
	tb := newTable[int]("t")
	const hash = 1<<40 | 2
	keys := []string{"a", "b", "a-key-longer-than-sixteen-bytes:1", "a-key-longer-than-sixteen-bytes:2", "c"}
	for _, k := range keys {
		tb.insert(k, hash).members = []member[int]{{}}
	}
	if tb.live != len(keys) {
		t.Fatalf("live = %d, want %d", tb.live, len(keys))
	}
	for _, k := range keys {
		if b := tb.find(k, hash); b == nil || b.key != k {
			t.Fatalf("find(%q) = %v", k, b)
		}
	}
	tb.delete(tb.find("b", hash))
	tb.delete(tb.find("a-key-longer-than-sixteen-bytes:1", hash))
	for _, k := range keys {
		gone := k == "b" || k == "a-key-longer-than-sixteen-bytes:1"
		if b := tb.find(k, hash); (b == nil) != gone {
			t.Errorf("after removals, find(%q) = %v", k, b)
		}
	}
	if b := tb.find("d", hash); b != nil {
		t.Errorf("find of an absent key = %v", b)
	}
}

// TestTablesGrowAndShrink registers and removes enough entries to rehash a
// topic's table both ways, checking matches throughout.
func TestTablesGrowAndShrink(t *testing.T) {
	const n = 5000
	ix := New[int]()
	entries := make([]*Entry[int], n)
	for i := range entries {
		entries[i] = &Entry[int]{Subscriber: "s" + strconv.Itoa(i), Value: i}
		ix.Set(entries[i], Keys{"t": {key(i), "shared"}})
	}
	grown := len(ix.topics["t"].buckets)
	if grown < n {
		t.Fatalf("a table of %d keys has %d buckets", n+1, grown)
	}
	for i, e := range entries {
		if i%100 != 0 {
			ix.Remove(e)
		}
	}
	tb := ix.topics["t"]
	if len(tb.buckets) >= grown/4 {
		t.Errorf("after removing 99%% of the keys the table still has %d buckets of %d", len(tb.buckets), grown)
	}
	if tb.live != n/100+1 {
		t.Errorf("live = %d, want %d", tb.live, n/100+1)
	}
	for i := range n {
		want := []string(nil)
		if i%100 == 0 {
			want = []string{"s" + strconv.Itoa(i)}
		}
		if got := matched(ix, "t", []string{key(i)}, ""); !slices.Equal(got, want) {
			t.Fatalf("Match(%s) = %v, want %v", key(i), got, want)
		}
	}
	if got := matched(ix, "t", []string{"shared"}, ""); len(got) != n/100 {
		t.Errorf("Match(shared) reached %d, want %d", len(got), n/100)
	}
}

// TestABucketIsOneCacheLine keeps the layout the lookup relies on: a table
// slot, its key (when short) and its members' address in one cache line.
func TestABucketIsOneCacheLine(t *testing.T) {
	if size := unsafe.Sizeof(bucket[int]{}); size != 64 {
		t.Errorf("a bucket is %d bytes, want 64", size)
	}
}

// TestManyAudienceKeysDeliverOnce reaches more buckets than Match keeps from
// its first lookups, so that it looks the rest up again.
func TestManyAudienceKeysDeliverOnce(t *testing.T) {
	const keys = 7
	ix := New[int]()
	var audience []string
	for i := range keys {
		audience = append(audience, "k"+strconv.Itoa(i))
	}
	entries := map[string]Keys{}
	for i := range keys {
		for j := i; j < keys; j++ {
			// Entry sij listens to keys i to j.
			s := "s" + strconv.Itoa(i) + strconv.Itoa(j)
			entries[s] = Keys{"t": audience[i : j+1]}
			ix.Set(&Entry[int]{Subscriber: s}, entries[s])
		}
	}
	for n := 1; n <= keys; n++ {
		var want []string
		for s, k := range entries {
			if Matches(k, s, "t", audience[:n], "s12") {
				want = append(want, s)
			}
		}
		if got := sorted(matched(ix, "t", audience[:n], "s12")); !slices.Equal(got, sorted(want)) {
			t.Errorf("Match(%v, actor s12) = %v, want %v", audience[:n], got, sorted(want))
		}
	}
}
