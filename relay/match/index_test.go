package match_test

import (
	"slices"
	"testing"

	"github.com/pgrelay/pgrelay/relay/match"
)

func recipients(ix *match.Index[string], topic string, audience []string, actor string) []string {
	var got []string
	ix.Match(topic, audience, actor, func(e *match.Entry[string]) { got = append(got, e.Value) })
	slices.Sort(got)
	return got
}

func entry(sub string) *match.Entry[string] {
	return &match.Entry[string]{Subscriber: sub, Value: sub}
}

func TestAnEventReachesEverySubscriberListeningToOneOfItsKeysOnce(t *testing.T) {
	ix := match.New[string]()
	ix.Set(entry("zolo"), match.Keys{"templates": {"location:1"}})
	ix.Set(entry("zewi"), match.Keys{"templates": {"location:1", "location:2"}})
	ix.Set(entry("zowi"), match.Keys{"templates": {"location:1", "location:2", "org:1"}})
	ix.Set(entry("other"), match.Keys{"templates": {"location:9", "org:9"}})

	cases := []struct {
		name     string
		audience []string
		actor    string
		want     []string
	}{
		{"one shared location", []string{"location:1"}, "", []string{"zewi", "zolo", "zowi"}},
		{"several keys reach a subscriber once", []string{"location:1", "location:2", "org:1"}, "", []string{"zewi", "zolo", "zowi"}},
		{"creator org only", []string{"org:1"}, "", []string{"zowi"}},
		{"the actor never receives its own event", []string{"location:1", "org:1"}, "zowi", []string{"zewi", "zolo"}},
		{"no audience", nil, "", nil},
		{"unknown key", []string{"location:404"}, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := recipients(ix, "templates", c.audience, c.actor); !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestKeysOfOneTopicDoNotMatchAnother(t *testing.T) {
	ix := match.New[string]()
	ix.Set(entry("a"), match.Keys{"templates": {"k"}})
	ix.Set(entry("b"), match.Keys{"messages": {"k"}})
	if got := recipients(ix, "messages", []string{"k"}, ""); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("got %v, want [b]", got)
	}
	if got := recipients(ix, "unknown", []string{"k"}, ""); got != nil {
		t.Fatalf("unknown topic matched %v", got)
	}
}

func TestSetReplacesKeysAndRemoveForgets(t *testing.T) {
	ix := match.New[string]()
	e := entry("a")
	ix.Set(e, match.Keys{"templates": {"old"}})
	ix.Set(e, match.Keys{"templates": {"new"}})
	if got := recipients(ix, "templates", []string{"old"}, ""); got != nil {
		t.Fatalf("old key still matches: %v", got)
	}
	if got := recipients(ix, "templates", []string{"new"}, ""); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("new key: got %v, want [a]", got)
	}
	if ix.Len() != 1 {
		t.Fatalf("Len after two Sets of one entry = %d, want 1", ix.Len())
	}
	ix.Remove(e)
	ix.Remove(e) // removing twice is harmless
	if got := recipients(ix, "templates", []string{"new"}, ""); got != nil {
		t.Fatalf("removed entry matched: %v", got)
	}
	if ix.Len() != 0 {
		t.Fatalf("Len after Remove = %d, want 0", ix.Len())
	}
}

func TestMatchesAgreesWithTheIndex(t *testing.T) {
	keys := match.Keys{"templates": {"location:1", "org:1"}}
	cases := []struct {
		topic, actor string
		audience     []string
		want         bool
	}{
		{"templates", "", []string{"location:1"}, true},
		{"templates", "", []string{"location:2"}, false},
		{"templates", "me", []string{"org:1"}, false},
		{"messages", "", []string{"location:1"}, false},
	}
	for _, c := range cases {
		if got := match.Matches(keys, "me", c.topic, c.audience, c.actor); got != c.want {
			t.Errorf("Matches(%s, %v, actor %q) = %v, want %v", c.topic, c.audience, c.actor, got, c.want)
		}
	}
}
