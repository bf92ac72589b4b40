// Package replay keeps the recent past of the event log in memory, so that
// streams resuming from it replay without each reading the log.
//
// A reconnect storm (a relay dies and its clients resume on the others, all
// from positions a few seconds back) would otherwise read the same stretch
// of the log once per stream. The Window holds, within a byte bound, every
// event of the log in one contiguous range of positions, as the relay's
// reader received them, and hands each resuming stream the events it asks
// for; the stream still matches each one against its own filter, exactly as
// it matches rows read from the log.
//
// The window also indexes its events by audience key, so that a stream is
// handed only the events its filter's keys select (and every reset marker)
// rather than every event since its position: in a storm each of thousands
// of streams would otherwise walk the same thousands of events to find the
// few addressed to it.
package replay

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/match"
)

// Window is the log's every event in (start, end], the newest ones, at most
// a number of bytes of them. It is safe for concurrent use.
//
// Its invariant is contiguity: an event of the log whose position lies in
// (start, end] is in the window. Record keeps it by taking only runs that
// follow on from end, and starting over at a gap.
type Window struct {
	maxBytes int

	mu sync.Mutex
	// held reports whether the window covers a range at all; start is then
	// the position just before its first event (exclusive), end its last
	// event, or start if it has none.
	held       bool
	start, end eventlog.ID
	// msgs[head:] are the events, in log order, and costs their sizes.
	msgs  []*hub.Message
	costs []int
	head  int
	bytes int
	// base numbers msgs[0]: the event at msgs[i] is number base+i for as
	// long as the window holds it, whatever compaction does to the slice.
	base uint64
	// byKey lists, for each topic and audience key, the numbers of the
	// events addressed to it, in log order; resets those of the reset
	// markers. Numbers below base+head are of evicted events, skipped by
	// reads and dropped at compaction.
	byKey  map[indexKey][]uint64
	resets []uint64

	evicted atomic.Uint64
	restart atomic.Uint64
}

// New returns a window of at most maxBytes, as Cost counts them; 0 or less
// keeps nothing (every replay then reads the log).
func New(maxBytes int) *Window {
	return &Window{maxBytes: maxBytes, byKey: map[indexKey][]uint64{}}
}

// indexKey is one audience key of one topic.
type indexKey struct{ topic, key string }

// Cost is what one event counts against the window's bound: its row, topic,
// audience and actor, the two wire encodings a Message may come to hold
// (each about the size of the row), and the bookkeeping around them, its
// entry in the key index included.
func Cost(e *eventlog.Event) int {
	n := 256 + len(e.Topic) + 3*len(e.Payload) + len(e.Actor)
	for _, a := range e.Audience {
		n += 24 + len(a)
	}
	return n
}

// Record adds events that are every event of the log in (prev, last], in
// order, where last is the position of the last of them: a read of the log
// after prev, or a run of events the sequencer announced after prev. The
// part that follows on from the window is kept; a run that leaves a gap
// after the window starts it over at prev. The oldest events leave once
// the window is over its bound.
func (w *Window) Record(prev eventlog.ID, events []eventlog.Event) {
	if w.maxBytes <= 0 || len(events) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held || w.end.Less(prev) {
		if w.held {
			w.restart.Add(1)
		}
		w.clear()
		w.held, w.start, w.end = true, prev, prev
	}
	for i := range events {
		e := &events[i]
		if !w.end.Less(e.ID) {
			continue // already held
		}
		c := Cost(e) + w.index(w.base+uint64(len(w.msgs)), e)
		w.msgs = append(w.msgs, hub.NewMessage(*e))
		w.costs = append(w.costs, c)
		w.bytes += c
		w.end = e.ID
	}
	w.evict()
}

// index lists event number n under each of its audience keys, or among the
// reset markers, and returns the bytes of the index entries it made for
// keys new to the window, which the event is charged with (Cost counts its
// place in the lists). Called with w.mu held.
func (w *Window) index(n uint64, e *eventlog.Event) int {
	if e.IsReset() {
		w.resets = append(w.resets, n)
		return 0
	}
	made := 0
	for _, a := range e.Audience {
		k := indexKey{e.Topic, a}
		l, ok := w.byKey[k]
		if !ok {
			made += keyEntryCost
		}
		if len(l) > 0 && l[len(l)-1] == n {
			continue // a key named twice in one audience
		}
		w.byKey[k] = append(l, n)
	}
	return made
}

// keyEntryCost is what a key's entry in the index takes (its map slot and
// the start of its list): about 100 bytes on 64-bit platforms, measured
// with 100,000 keys of one event each. A key's entry goes once its list is
// empty, at the next compaction.
const keyEntryCost = 104

// evict drops the oldest events until the window is within its bound.
// Called with w.mu held.
func (w *Window) evict() {
	for w.bytes > w.maxBytes && w.head < len(w.msgs) {
		w.start = w.msgs[w.head].ID
		w.bytes -= w.costs[w.head]
		w.msgs[w.head] = nil
		w.head++
		w.evicted.Add(1)
	}
	// Compact once half the slice is dropped events: appends then reuse
	// the space instead of growing the slice forever.
	if w.head > 0 && w.head >= len(w.msgs)/2 {
		n := copy(w.msgs, w.msgs[w.head:])
		clear(w.msgs[n:])
		w.msgs = w.msgs[:n]
		copy(w.costs, w.costs[w.head:])
		w.costs = w.costs[:n]
		w.base += uint64(w.head)
		w.head = 0
		for k, l := range w.byKey {
			if l = dropBelow(l, w.base); len(l) == 0 {
				delete(w.byKey, k)
			} else {
				w.byKey[k] = l
			}
		}
		w.resets = dropBelow(w.resets, w.base)
	}
}

// dropBelow removes the numbers below n from the sorted list l, in place.
func dropBelow(l []uint64, n uint64) []uint64 {
	i, _ := slices.BinarySearch(l, n)
	return l[:copy(l, l[i:])]
}

func (w *Window) clear() {
	clear(w.msgs)
	w.msgs, w.costs, w.head, w.bytes = w.msgs[:0], w.costs[:0], 0, 0
	w.base = 0
	clear(w.byKey)
	w.resets = w.resets[:0]
}

// Read returns the window's events in (after, upto], in order: at most
// limit of them, and no more once their rows reach maxBytes (0: no byte
// bound), but at least one if there is one. covered is the position the
// returned events reach: every event of the log in (after, covered] is
// among them, and the caller continues from there. ok is false when the
// window does not hold after's successor (after is before its start, or it
// holds nothing); a caller whose covered stops short of upto with no event
// returned has reached the window's end, and reads the rest from the log.
func (w *Window) Read(after, upto eventlog.ID, limit, maxBytes int) (msgs []*hub.Message, covered eventlog.ID, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	first, last, covered, ok := w.span(after, upto)
	if !ok {
		return nil, after, false
	}
	numbers := make([]uint64, 0, min(int(last-first), max(limit, 1)+1))
	for n := first; n < last && len(numbers) <= limit; n++ {
		numbers = append(numbers, n)
	}
	return w.take(numbers, covered, limit, maxBytes)
}

// ReadFor is Read of the events a filter of keys selects, and every reset
// marker: those whose topic has, in keys, one of their audience keys. The
// others are left out, and covered reaches past them: every event of
// (after, covered] that keys select is among msgs. The caller still matches
// each event against its filter (the actor, a filter changed since).
func (w *Window) ReadFor(after, upto eventlog.ID, keys match.Keys, limit, maxBytes int) (msgs []*hub.Message, covered eventlog.ID, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	first, last, covered, ok := w.span(after, upto)
	if !ok {
		return nil, after, false
	}
	var numbers []uint64
	add := func(l []uint64) {
		i, _ := slices.BinarySearch(l, first)
		for _, n := range l[i:] {
			if n >= last {
				break
			}
			numbers = append(numbers, n)
		}
	}
	add(w.resets)
	for topic, ks := range keys {
		for _, k := range ks {
			add(w.byKey[indexKey{topic, k}])
		}
	}
	slices.Sort(numbers)
	return w.take(slices.Compact(numbers), covered, limit, maxBytes)
}

// span returns the numbers [first, last) of the events held in (after,
// upto], and the position a read of all of them covers. ok is false when
// the window does not hold after's successor. Called with w.mu held.
func (w *Window) span(after, upto eventlog.ID) (first, last uint64, covered eventlog.ID, ok bool) {
	if !w.held || after.Less(w.start) {
		return 0, 0, after, false
	}
	held := w.msgs[w.head:]
	i := sort.Search(len(held), func(i int) bool { return after.Less(held[i].ID) })
	j := i + sort.Search(len(held)-i, func(j int) bool { return upto.Less(held[i+j].ID) })
	covered = after
	if w.end.Less(upto) {
		upto = w.end
	}
	if covered.Less(upto) {
		covered = upto
	}
	offset := w.base + uint64(w.head)
	return offset + uint64(i), offset + uint64(j), covered, true
}

// take returns the events numbered, in order, within the bounds Read
// describes, and the position they cover: covered if they all fit, else
// the last one taken. Called with w.mu held.
func (w *Window) take(numbers []uint64, covered eventlog.ID, limit, maxBytes int) ([]*hub.Message, eventlog.ID, bool) {
	limit = max(limit, 1)
	msgs := make([]*hub.Message, 0, min(len(numbers), limit))
	bytes := 0
	for _, n := range numbers {
		if len(msgs) >= limit || (maxBytes > 0 && bytes >= maxBytes) {
			// Stopped at a bound: the caller resumes after the last one.
			return msgs, msgs[len(msgs)-1].ID, true
		}
		m := w.msgs[n-w.base]
		msgs = append(msgs, m)
		bytes += len(m.Payload)
	}
	return msgs, covered, true
}

// Holds reports whether the window holds after's successor: a replay from
// after starts from memory (as long as the window keeps it).
func (w *Window) Holds(after eventlog.ID) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.held && !after.Less(w.start)
}

// Stats are a window's figures.
type Stats struct {
	Events  int    // held now
	Bytes   int    // held now, as Cost counts them
	Evicted uint64 // events that left for the bound, since the start
	// Restarts counts the times the window started over at a gap (a run of
	// events that did not follow on from it).
	Restarts uint64
}

// Stats returns the window's figures.
func (w *Window) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Stats{Events: len(w.msgs) - w.head, Bytes: w.bytes, Evicted: w.evicted.Load(), Restarts: w.restart.Load()}
}
