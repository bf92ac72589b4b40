package replay_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/match"
	"github.com/pgrelay/pgrelay/relay/replay"
)

func at(seq int64) eventlog.ID { return eventlog.ID{Xid: 100, Seq: seq} }

// run returns the events at seqs, as a read of the log would.
func run(seqs ...int64) []eventlog.Event {
	out := make([]eventlog.Event, len(seqs))
	for i, s := range seqs {
		out[i] = eventlog.Event{ID: at(s), Topic: "templates", Payload: []byte(`{"n":1}`), Audience: []string{"loc-1"}}
	}
	return out
}

func seqs(msgs []*hub.Message) []int64 {
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID.Seq
	}
	return out
}

func TestAWindowServesWhatFollowsAPositionItHoldsUpToTheEndAsked(t *testing.T) {
	w := replay.New(1 << 20)
	w.Record(at(10), run(11, 12, 13))
	w.Record(at(13), run(14, 15))
	for _, c := range []struct {
		after, upto int64
		want        []int64
		covered     int64
	}{
		{10, 15, []int64{11, 12, 13, 14, 15}, 15},
		{12, 14, []int64{13, 14}, 14},
		{12, 20, []int64{13, 14, 15}, 15}, // the window ends at 15: the rest is the log's
		{15, 20, nil, 15},
	} {
		got, covered, ok := w.Read(at(c.after), at(c.upto), 100, 0)
		if !ok || !slices.Equal(seqs(got), c.want) || covered != at(c.covered) {
			t.Errorf("Read(%d, %d) = %v up to %v, %v; want %v up to %d, true", c.after, c.upto, seqs(got), covered.Seq, ok, c.want, c.covered)
		}
	}
	if _, _, ok := w.Read(at(9), at(15), 100, 0); ok {
		t.Errorf("Read from 9, before the window's start at 10, served; want the log to serve it")
	}
}

func TestAWindowReadStopsAtItsBoundsAndSaysWhereToGoOn(t *testing.T) {
	w := replay.New(1 << 20)
	w.Record(at(0), run(1, 2, 3, 4, 5))
	got, covered, _ := w.Read(at(0), at(5), 2, 0)
	if !slices.Equal(seqs(got), []int64{1, 2}) || covered != at(2) {
		t.Errorf("two at a time: %v up to %d, want [1 2] up to 2", seqs(got), covered.Seq)
	}
	got, covered, _ = w.Read(at(0), at(5), 100, 1) // one byte: one event still
	if !slices.Equal(seqs(got), []int64{1}) || covered != at(1) {
		t.Errorf("one byte at a time: %v up to %d, want [1] up to 1", seqs(got), covered.Seq)
	}
}

func TestARunThatLeavesAGapStartsTheWindowOverAndOneAlreadyHeldAddsOnlyItsNewEvents(t *testing.T) {
	w := replay.New(1 << 20)
	w.Record(at(0), run(1, 2))
	w.Record(at(1), run(2, 3)) // overlaps: 3 is new
	w.Record(at(5), run(6))    // 4 and 5 were never recorded here
	if _, _, ok := w.Read(at(2), at(6), 100, 0); ok {
		t.Fatalf("served from 2 across a gap at 4..5")
	}
	got, _, ok := w.Read(at(5), at(6), 100, 0)
	if !ok || !slices.Equal(seqs(got), []int64{6}) {
		t.Errorf("after the gap: %v, %v; want [6], true", seqs(got), ok)
	}
	if s := w.Stats(); s.Events != 1 || s.Restarts != 1 {
		t.Errorf("stats %+v, want 1 event held after 1 restart", s)
	}
}

func TestAWindowKeepsItsNewestEventsWithinItsBytes(t *testing.T) {
	one := replay.Cost(&run(1)[0])
	w := replay.New(3 * one)
	for s := int64(1); s <= 10; s++ {
		w.Record(at(s-1), run(s))
	}
	if s := w.Stats(); s.Events != 3 || s.Bytes > 3*one || s.Evicted != 7 {
		t.Errorf("stats %+v, want the 3 newest within %d bytes, 7 evicted", s, 3*one)
	}
	if _, _, ok := w.Read(at(6), at(10), 100, 0); ok {
		t.Errorf("served from 6, evicted")
	}
	got, _, ok := w.Read(at(7), at(10), 100, 0)
	if !ok || !slices.Equal(seqs(got), []int64{8, 9, 10}) {
		t.Errorf("from 7: %v, %v; want [8 9 10], true", seqs(got), ok)
	}
}

func TestAWindowOfNoBytesServesNothing(t *testing.T) {
	w := replay.New(0)
	w.Record(at(0), run(1))
	if _, _, ok := w.Read(at(0), at(1), 100, 0); ok {
		t.Errorf("a window of 0 bytes served a read")
	}
}

func TestConcurrentCallersShareHorizonReadsEachBegunAfterItAsked(t *testing.T) {
	var reads atomic.Int64
	var horizon atomic.Int64
	release := make(chan struct{})
	h := replay.NewHorizons(func(ctx context.Context) (eventlog.ID, error) {
		reads.Add(1)
		v := horizon.Load()
		<-release
		return at(v), nil
	})
	// One caller starts a read and is held in it; the prune that follows
	// must be seen by every caller arriving after that read began.
	first := make(chan eventlog.ID, 1)
	go func() { id, _ := h.Fresh(context.Background()); first <- id }()
	for reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	horizon.Store(7)
	const callers = 50
	var wg sync.WaitGroup
	got := make([]eventlog.ID, callers)
	for i := range callers {
		wg.Go(func() { got[i], _ = h.Fresh(context.Background()) })
	}
	time.Sleep(20 * time.Millisecond) // let them queue behind the read under way
	close(release)
	wg.Wait()
	if id := <-first; id != at(0) {
		t.Errorf("the first caller got %v, want the horizon before the prune", id)
	}
	for i, id := range got {
		if id != at(7) {
			t.Errorf("caller %d, arrived after the first read began, got %v; want the horizon after the prune", i, id)
		}
	}
	if n := reads.Load(); n > 3 {
		t.Errorf("%d horizon reads for %d callers, want them shared", n, callers+1)
	}
}

func TestACallerWhoseContextEndsDuringAHorizonReadDoesNotFailTheOthers(t *testing.T) {
	started := make(chan struct{})
	var reads atomic.Int64
	h := replay.NewHorizons(func(ctx context.Context) (eventlog.ID, error) {
		if reads.Add(1) == 1 {
			close(started)
			<-ctx.Done()
			return eventlog.ID{}, ctx.Err()
		}
		return at(3), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := h.Fresh(ctx); firstErr <- err }()
	<-started
	second := make(chan eventlog.ID, 1)
	go func() { id, _ := h.Fresh(context.Background()); second <- id }()
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled caller: %v, want context.Canceled", err)
	}
	if id := <-second; id != at(3) {
		t.Errorf("the other caller got %v, want the horizon of a read of its own", id)
	}
}

// event is an event of topic templates at seq addressed to audience.
func event(seq int64, audience ...string) eventlog.Event {
	return eventlog.Event{ID: at(seq), Topic: "templates", Payload: []byte(`{"n":1}`), Audience: audience}
}

func TestAKeyedReadReturnsTheEventsItsKeysSelectAndEveryResetAndCoversThoseInBetween(t *testing.T) {
	w := replay.New(1 << 20)
	reset := eventlog.Event{ID: at(4), Topic: eventlog.ResetTopic, Payload: []byte(`{}`)}
	w.Record(at(0), []eventlog.Event{
		event(1, "loc-1"), event(2, "loc-2"), event(3, "loc-1", "loc-2", "loc-1"), reset,
		event(5, "loc-3"), {ID: at(6), Topic: "messages", Payload: []byte(`{}`), Audience: []string{"loc-1"}},
		event(7, "loc-2"),
	})
	loc1 := match.Keys{"templates": {"loc-1"}}
	for _, c := range []struct {
		name    string
		keys    match.Keys
		after   int64
		limit   int
		want    []int64
		covered int64
	}{
		{"one key", loc1, 0, 100, []int64{1, 3, 4}, 7},
		{"two keys, an event of both once", match.Keys{"templates": {"loc-1", "loc-2"}}, 0, 100, []int64{1, 2, 3, 4, 7}, 7},
		{"another topic's keys select its own events", match.Keys{"messages": {"loc-1"}}, 0, 100, []int64{4, 6}, 7},
		{"no keys: the resets only", nil, 0, 100, []int64{4}, 7},
		{"from a position", loc1, 3, 100, []int64{4}, 7},
		{"at a bound, up to the last one returned", loc1, 0, 2, []int64{1, 3}, 3},
	} {
		got, covered, ok := w.ReadFor(at(c.after), at(7), c.keys, c.limit, 0)
		if !ok || !slices.Equal(seqs(got), c.want) || covered != at(c.covered) {
			t.Errorf("%s: %v up to %d, %v; want %v up to %d", c.name, seqs(got), covered.Seq, ok, c.want, c.covered)
		}
	}
	if _, _, ok := w.ReadFor(at(-1), at(7), loc1, 100, 0); ok {
		t.Errorf("a keyed read from before the window's start served")
	}
}

// TestAKeyedReadIsAFullReadFilteredByItsKeys checks ReadFor against Read
// while events come and go (a window of a few events, so that eviction,
// compaction of the index and restarts at a gap all happen often): read to
// the end batch by batch, both give the same events once the keys' filter
// is applied to Read's.
func TestAKeyedReadIsAFullReadFilteredByItsKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keySpace := []string{"a", "b", "c", "d", "e"}
	one := replay.Cost(&eventlog.Event{ID: at(1), Topic: "templates", Payload: []byte(`{"n":1}`), Audience: []string{"a", "b"}})
	w := replay.New(40 * one)
	selects := func(keys match.Keys, m *hub.Message) bool {
		if m.IsReset() {
			return true
		}
		for _, k := range keys[m.Topic] {
			if slices.Contains(m.Audience, k) {
				return true
			}
		}
		return false
	}
	readAll := func(after, upto eventlog.ID, read func(after eventlog.ID) ([]*hub.Message, eventlog.ID, bool)) []int64 {
		var out []int64
		for after.Less(upto) {
			msgs, covered, ok := read(after)
			if !ok {
				t.Fatalf("read from %v not served", after)
			}
			if !after.Less(covered) {
				break // the window's end
			}
			out = append(out, seqs(msgs)...)
			after = covered
		}
		return out
	}
	seq := int64(0)
	for round := range 2000 {
		prev := at(seq)
		if rng.IntN(50) == 0 {
			prev = at(seq + 3) // a gap: the window starts over
			seq += 3
		}
		var run []eventlog.Event
		for range 1 + rng.IntN(4) {
			seq++
			e := event(seq)
			switch {
			case rng.IntN(30) == 0:
				e.Topic = eventlog.ResetTopic
			case rng.IntN(4) == 0:
				e.Topic = "messages"
			}
			for range rng.IntN(4) {
				e.Audience = append(e.Audience, keySpace[rng.IntN(len(keySpace))])
			}
			run = append(run, e)
		}
		w.Record(prev, run)
		keys := match.Keys{"templates": {keySpace[rng.IntN(5)], keySpace[rng.IntN(5)]}}
		if rng.IntN(3) == 0 {
			keys["messages"] = []string{keySpace[rng.IntN(5)]}
		}
		after := at(seq - int64(rng.IntN(45)))
		if _, _, ok := w.Read(after, at(seq), 1, 0); !ok {
			continue // evicted, or before a restart
		}
		limit := 1 + rng.IntN(8)
		var want []int64
		all, _, _ := w.Read(after, at(seq), 1000, 0)
		for _, m := range all {
			if selects(keys, m) {
				want = append(want, m.ID.Seq)
			}
		}
		got := readAll(after, at(seq), func(a eventlog.ID) ([]*hub.Message, eventlog.ID, bool) {
			return w.ReadFor(a, at(seq), keys, limit, 0)
		})
		if !slices.Equal(got, want) {
			t.Fatalf("round %d, keys %v after %d, %d at a time: got %v, want %v", round, keys, after.Seq, limit, got, want)
		}
	}
	if s := w.Stats(); s.Evicted == 0 || s.Restarts == 0 {
		t.Fatalf("stats %+v: the test meant eviction and restarts to happen", s)
	}
}
