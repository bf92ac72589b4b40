package replay_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
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
