package match

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
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
				keys[k] = "k" + strconv.Itoa(rng.IntN(keySpace))
			}
			ix.Set(e, Keys{"t": keys})
			model[e] = keys
		}
		if ix.Len() != len(model) {
			t.Fatalf("step %d: Len = %d, want %d", step, ix.Len(), len(model))
		}
		audience := []string{"k" + strconv.Itoa(rng.IntN(keySpace)), "k" + strconv.Itoa(rng.IntN(keySpace))}
		actor := all[rng.IntN(entries)].Subscriber
		var want []string
		for m, keys := range model {
			if m.Subscriber != actor && Matches(Keys{"t": keys}, m.Subscriber, "t", audience, actor) {
				want = append(want, m.Subscriber)
			}
		}
		if got := sorted(matched(ix, "t", audience, actor)); !slices.Equal(got, sorted(want)) {
			t.Fatalf("step %d: Match(%v, actor %s) = %v, want %v", step, audience, actor, got, sorted(want))
		}
	}
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
