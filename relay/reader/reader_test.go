package reader_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/reader"
	"github.com/pgrelay/pgrelay/relay/seal"
)

const channel = "pgrelay_events"

// sequencerPID is the session the fake sequencer seals for.
const sequencerPID = 77

// fakeHub is a hub that records what was published.
type fakeHub struct {
	mu        sync.Mutex
	position  eventlog.ID
	published []eventlog.ID
	// before, if set, is called with every run about to be published.
	before func(position eventlog.ID, events []eventlog.Event)
}

func (h *fakeHub) Position() eventlog.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.position
}

func (h *fakeHub) Publish(events []eventlog.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.before != nil {
		h.before(h.position, events)
	}
	for _, e := range events {
		if h.position.Less(e.ID) {
			h.published = append(h.published, e.ID)
			h.position = e.ID
		}
	}
}

func (h *fakeHub) PublishAfter(prev eventlog.ID, events []eventlog.Event) bool {
	h.mu.Lock()
	if h.position != prev {
		h.mu.Unlock()
		return false
	}
	h.mu.Unlock()
	h.Publish(events)
	return true
}

func (h *fakeHub) ids() []eventlog.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.published)
}

// fakeLog is a log of events whose own horizon may lag what was announced.
type fakeLog struct {
	mu      sync.Mutex
	events  []eventlog.Event
	horizon eventlog.ID // ReadAfter returns nothing at or past it
	reads   []string    // "between" or "after", in order
	batches []eventlog.Batch
	forgets int
}

func (l *fakeLog) ReadBetween(_ context.Context, after, upto eventlog.ID, b eventlog.Batch) ([]eventlog.Event, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads = append(l.reads, "between")
	events, full := l.slice(after, func(id eventlog.ID) bool { return !upto.Less(id) }, b)
	return events, full, nil
}

func (l *fakeLog) ReadAfter(_ context.Context, after eventlog.ID, b eventlog.Batch) ([]eventlog.Event, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads = append(l.reads, "after")
	events, full := l.slice(after, func(id eventlog.ID) bool { return id.Less(l.horizon) }, b)
	return events, full, nil
}

// slice is what a read bounded by b returns, as eventlog's reads do.
func (l *fakeLog) slice(after eventlog.ID, ok func(eventlog.ID) bool, b eventlog.Batch) ([]eventlog.Event, bool) {
	var out []eventlog.Event
	bytes := 0
	l.batches = append(l.batches, b)
	for _, e := range l.events {
		if !after.Less(e.ID) || !ok(e.ID) {
			continue
		}
		if len(out) == b.Events || (b.Bytes > 0 && bytes >= b.Bytes) {
			return out, true
		}
		out = append(out, e)
		bytes += len(e.Payload)
	}
	return out, false
}

func (l *fakeLog) Forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgets++
}

func (l *fakeLog) readCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reads)
}

func event(seq int64) eventlog.Event {
	return eventlog.Event{ID: eventlog.ID{Xid: 10, Seq: seq}, Topic: "t", Payload: []byte(`{"n":1}`), Audience: []string{"k"}, CreatedAt: time.Unix(0, 0)}
}

func id(seq int64) eventlog.ID { return eventlog.ID{Xid: 10, Seq: seq} }

func newKey(t *testing.T) *seal.Key {
	t.Helper()
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	k, err := seal.New(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type rig struct {
	hub *fakeHub
	log *fakeLog
	key *seal.Key
	r   *reader.Reader
}

// start runs a reader over a log of events 1..n, with its hub at position
// start and the given safety poll.
func start(t *testing.T, n, at int64, safetyPoll time.Duration) *rig {
	t.Helper()
	return startBounded(t, n, at, safetyPoll, 2, 0)
}

func startBounded(t *testing.T, n, at int64, safetyPoll time.Duration, batch, batchBytes int) *rig {
	t.Helper()
	g := &rig{hub: &fakeHub{position: id(at)}, log: &fakeLog{horizon: id(n + 1)}, key: newKey(t)}
	for i := int64(1); i <= n; i++ {
		g.log.events = append(g.log.events, event(i))
	}
	g.r = reader.New(reader.Config{Channel: channel, SafetyPoll: safetyPoll, Batch: batch, BatchBytes: batchBytes}, g.hub, g.log, g.key,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

// announce seals an announcement of events (prev, upto] as the sequencer.
func (g *rig) announce(t *testing.T, prev int64, events []eventlog.Event, upto int64) {
	t.Helper()
	payloads, err := eventlog.EncodeAnnouncements(id(prev), events, id(upto))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		g.r.Announced(g.key.Seal(channel, sequencerPID, []byte(p)), sequencerPID)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func ids(seqs ...int64) []eventlog.ID {
	var out []eventlog.ID
	for _, s := range seqs {
		out = append(out, id(s))
	}
	return out
}

func TestAnnouncedEventsThatFollowThePositionArePublishedWithoutALogRead(t *testing.T) {
	g := start(t, 3, 1, time.Hour)
	g.announce(t, 1, []eventlog.Event{event(2), event(3)}, 3)
	if got := g.hub.ids(); !slices.Equal(got, ids(2, 3)) {
		t.Fatalf("published %v, want events 2 and 3", got)
	}
	if n := g.r.EventsAnnounced(); n != 2 {
		t.Errorf("EventsAnnounced = %d, want 2", n)
	}
	time.Sleep(20 * time.Millisecond)
	if n := g.log.readCount(); n != 0 {
		t.Errorf("the log was read %d times, want none", n)
	}
}

func TestNotificationsThatDoNotOpenAreCountedAndChangeNothing(t *testing.T) {
	g := start(t, 5, 1, time.Hour)
	fake, err := eventlog.EncodeAnnouncements(id(1), []eventlog.Event{event(100)}, id(100))
	if err != nil {
		t.Fatal(err)
	}
	other := newKey(t)
	genuine := g.key.Seal(channel, sequencerPID, []byte(fake[0]))
	forgeries := []struct {
		payload string
		from    uint32
	}{
		{fake[0], 999}, // plaintext in the announcement format
		{eventlog.EncodePosition(id(1 << 40)), 999}, // a position far ahead
		{genuine, 999}, // a genuine one, sent again by another session
		{other.Seal(channel, 999, []byte(fake[0])), 999},                             // sealed with another key
		{g.key.Seal("pgrelay_filters", sequencerPID, []byte(fake[0])), sequencerPID}, // for another channel
	}
	for _, f := range forgeries {
		g.r.Announced(f.payload, f.from)
	}
	time.Sleep(20 * time.Millisecond)
	if got := g.hub.ids(); len(got) != 0 {
		t.Fatalf("published %v after forgeries, want nothing", got)
	}
	if n := g.log.readCount(); n != 0 {
		t.Errorf("forgeries made %d log reads, want none", n)
	}
	if n := g.r.Forged(); n != uint64(len(forgeries)) {
		t.Errorf("Forged = %d, want %d", n, len(forgeries))
	}
	// The settled position did not move either: a genuine announcement
	// of the next event is still chained and published.
	g.announce(t, 1, []eventlog.Event{event(2)}, 2)
	if got := g.hub.ids(); !slices.Equal(got, ids(2)) {
		t.Fatalf("published %v, want event 2", got)
	}
}

func TestAGapIsReadFromTheLogUpToTheAnnouncedPositionWhateverTheHorizon(t *testing.T) {
	g := start(t, 6, 1, time.Hour)
	// This relay's own horizon would stop before event 2; the sequencer
	// vouched for everything up to 5.
	g.log.mu.Lock()
	g.log.horizon = id(2)
	g.log.mu.Unlock()
	g.announce(t, 3, []eventlog.Event{event(4), event(5)}, 5) // this relay missed 2 and 3
	eventually(t, "events 2..5 published", func() bool { return slices.Equal(g.hub.ids(), ids(2, 3, 4, 5)) })
	time.Sleep(20 * time.Millisecond)
	if got := g.hub.ids(); !slices.Equal(got, ids(2, 3, 4, 5)) {
		t.Fatalf("published %v, want 2..5 and not 6, which was never announced", got)
	}
}

func TestARelayAheadOfTheAnnouncementReadsNothing(t *testing.T) {
	g := start(t, 5, 5, time.Hour)
	g.announce(t, 2, []eventlog.Event{event(3)}, 3)
	time.Sleep(20 * time.Millisecond)
	if n := g.log.readCount(); n != 0 {
		t.Errorf("read the log %d times, want none", n)
	}
	if got := g.hub.ids(); len(got) != 0 {
		t.Errorf("published %v, want nothing", got)
	}
}

func TestAReconnectReadsUpToTheHorizonBeforeTheRelayIsReady(t *testing.T) {
	g := start(t, 5, 0, time.Hour)
	if g.r.Ready() {
		t.Fatal("ready before the listener connected")
	}
	g.r.Connected(true)
	g.r.Announced("", 0) // the listener's backlog signal
	eventually(t, "ready", g.r.Ready)
	if got := g.hub.ids(); !slices.Equal(got, ids(1, 2, 3, 4, 5)) {
		t.Fatalf("published %v, want the whole log", got)
	}
	g.log.mu.Lock()
	forgets := g.log.forgets
	g.log.mu.Unlock()
	if forgets == 0 {
		t.Error("a full read trusted the old list of other databases' transactions")
	}
	g.r.Connected(false)
	if g.r.Ready() {
		t.Error("still ready after the listener disconnected")
	}
}

func TestTheSafetyPollReadsTheLogWhenNoAnnouncementCame(t *testing.T) {
	g := start(t, 3, 0, 10*time.Millisecond)
	eventually(t, "the log read without any notification", func() bool { return slices.Equal(g.hub.ids(), ids(1, 2, 3)) })
}

func TestABurstOfLargeRowsIsReadInSlicesBoundedInBytes(t *testing.T) {
	g := startBounded(t, 0, 0, time.Hour, 1000, 3000)
	g.log.mu.Lock()
	for i := int64(1); i <= 9; i++ {
		e := event(i)
		e.Payload = make([]byte, 1000)
		g.log.events = append(g.log.events, e)
	}
	g.log.horizon = id(100)
	g.log.mu.Unlock()
	g.announce(t, 0, nil, 9)
	eventually(t, "all nine published", func() bool { return len(g.hub.ids()) == 9 })
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	// After the first read, the reader asks for about as many rows as fit
	// in 3,000 bytes, not for a batch of 1,000 cut short at the bound.
	if len(g.log.batches) < 3 {
		t.Fatalf("read %d times, want the nine rows in slices of about 3,000 bytes", len(g.log.batches))
	}
	for _, b := range g.log.batches[1:] {
		if b.Bytes != 3000 || b.Events > 4 {
			t.Errorf("read with bounds %+v, want at most 4 events and 3000 bytes", b)
		}
	}
}
