// Package stream turns one client connection into an ordered, gap-free event
// stream, whatever the transport: it registers the subscription, loads its
// filter, replays what the client missed from the log (or tells it to reset),
// then hands over to live events without a gap or a duplicate.
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/hub"
	"github.com/pgrelay/pgrelay/relay/match"
	"github.com/pgrelay/pgrelay/relay/replay"
)

// ErrUnknownSubscriber means the authenticated id is not a subscriber
// (HTTP 403).
var ErrUnknownSubscriber = errors.New("not a known subscriber")

// ErrUnknownTopic means a requested topic does not exist (HTTP 400).
var ErrUnknownTopic = errors.New("unknown topic")

// Sink is a transport's side of a stream. Calls come from one goroutine.
type Sink interface {
	// Event writes one event.
	Event(m *hub.Message) error
	// Reset tells the client that events it missed are no longer retained,
	// or missing from the log (a reset marker, eventlog.ResetTopic); the
	// stream continues after position at.
	Reset(at eventlog.ID) error
	// Heartbeat keeps an idle connection open through proxies.
	Heartbeat() error
	// Flush pushes written data to the client.
	Flush() error
}

// Request is what a client asks for.
type Request struct {
	Subscriber string
	// Topics to receive; nil means every topic.
	Topics []string
	// After, if set, resumes after that event id.
	After *eventlog.ID
	// Observer, if set, is told of this stream's deliveries in place of the
	// Opener's: a transport sets it to count deliveries under its own name.
	Observer Observer
	// Expires, if set, is when the subscriber's token expires: the stream
	// ends then with hub.ErrTokenExpired, and the client resumes with a fresh
	// token.
	Expires time.Time
}

// Observer is told about deliveries (for metrics). Methods must be cheap.
type Observer interface {
	Delivered(m *hub.Message, live bool)
}

// DB is the database streams are served from: queries for filters and
// topics, and read-only transactions for replays.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Opener opens streams on one relay.
type Opener struct {
	// DB is what streams read filters and replays through (a pool).
	DB        DB
	Hub       *hub.Hub
	Log       *slog.Logger
	Heartbeat time.Duration
	// CatchupBatch is how many events one replay query reads.
	CatchupBatch int
	// CatchupBytes bounds the payload bytes one replay query reads (0: no
	// bound), so that a replay holds about that much whatever the rows'
	// sizes; a single larger row is still read.
	CatchupBytes int
	Observer     Observer
	// Filters loads filters of opening streams (see filter.Batcher); nil
	// loads each on its own.
	Filters *filter.Batcher
	// Recent, if set, holds the recent past of the log (fed by the
	// relay's reader): the part of a replay it holds is served from
	// memory, every stream matching the shared events against its own
	// filter, instead of each stream reading the log. Horizons must then
	// be set too: it tells such a replay whether its position was pruned.
	Recent   *replay.Window
	Horizons *replay.Horizons

	topicsMu sync.Mutex
	topics   []string

	logReads     atomic.Uint64
	recentEvents atomic.Uint64
}

// ReplayLogReads counts the queries replays made to the log: one per batch
// read from relay.events, none for what Recent served.
func (o *Opener) ReplayLogReads() uint64 { return o.logReads.Load() }

// ReplayRecentEvents counts the events replays took from Recent instead of
// the log: those each stream's keys select and the reset markers, before
// the rest of its filter (so at least as many as were delivered).
func (o *Opener) ReplayRecentEvents() uint64 { return o.recentEvents.Load() }

// CheckTopics returns ErrUnknownTopic for a topic that is not registered. The
// registry is re-read on a miss, so topics added in SQL are served without a
// restart.
func (o *Opener) CheckTopics(ctx context.Context, topics []string) error {
	o.topicsMu.Lock()
	known := o.topics
	o.topicsMu.Unlock()
	missing := func() string {
		for _, t := range topics {
			if !slices.Contains(known, t) {
				return t
			}
		}
		return ""
	}
	if missing() == "" {
		return nil
	}
	fresh, err := filter.Topics(ctx, o.DB)
	if err != nil {
		return err
	}
	o.topicsMu.Lock()
	o.topics = fresh
	o.topicsMu.Unlock()
	known = fresh
	if t := missing(); t != "" {
		return fmt.Errorf("%w %q (known: %v)", ErrUnknownTopic, t, fresh)
	}
	return nil
}

// Stream is one open subscription.
type Stream struct {
	o          *Opener
	req        Request
	sub        *hub.Subscription
	activeFrom eventlog.ID
	// last is the position of the last event written to the client.
	last eventlog.ID
	// expiry ends the subscription when the token expires (nil without
	// Request.Expires).
	expiry *time.Timer
	// started, if set, is called once the stream's opening work is done:
	// its replay has read its first batch, or it had nothing to replay, or
	// it was closed first. It must be safe to call more than once (the
	// Gate gives back the stream's turn among opening streams, see
	// limit.Opening).
	started func()
}

func (st *Stream) markStarted() {
	if st.started != nil {
		st.started()
	}
}

// Open registers req's subscription and loads its filter. The caller must
// Close the stream.
func (o *Opener) Open(ctx context.Context, req Request) (*Stream, error) {
	if req.Topics != nil {
		if err := o.CheckTopics(ctx, req.Topics); err != nil {
			return nil, err
		}
	}
	sub, err := o.Hub.Subscribe(req.Subscriber, req.Topics)
	if err != nil {
		return nil, err
	}
	// Registered before the filter is loaded: a filter change notified from
	// now on reaches this subscription, and the generation keeps an older
	// load from overwriting a newer one.
	f, gen, err := o.loadFilter(ctx, req.Subscriber)
	if err != nil {
		sub.Close()
		return nil, err
	}
	activeFrom, err := o.Hub.Activate(sub, gen, f)
	if err != nil {
		sub.Close()
		if errors.Is(err, hub.ErrSubscriberGone) {
			return nil, fmt.Errorf("%w: %q", ErrUnknownSubscriber, req.Subscriber)
		}
		return nil, err
	}
	st := &Stream{o: o, req: req, sub: sub, activeFrom: activeFrom}
	if !req.Expires.IsZero() {
		// A timer rather than a check on each write: an idle stream writes
		// nothing but heartbeats, and the SSE pump has no goroutine per
		// stream to do the checking. Ending the subscription wakes whoever
		// serves it, as any other end does.
		st.expiry = time.AfterFunc(time.Until(req.Expires), func() { o.Hub.End(sub, hub.ErrTokenExpired) })
	}
	return st, nil
}

func (o *Opener) loadFilter(ctx context.Context, subscriber string) (filter.Filter, uint64, error) {
	if o.Filters != nil {
		return o.Filters.Load(ctx, subscriber)
	}
	gen := o.Hub.NextGeneration()
	filters, err := filter.Load(ctx, o.DB, []string{subscriber})
	return filters[subscriber], gen, err
}

func (st *Stream) observer() Observer {
	if st.req.Observer != nil {
		return st.req.Observer
	}
	return st.o.Observer
}

// Close ends the subscription.
func (st *Stream) Close() {
	st.markStarted()
	if st.expiry != nil {
		st.expiry.Stop()
	}
	st.sub.Close()
}

// Run replays and then streams live events into sink until ctx is done, the
// sink fails, or the hub ends the subscription (the returned error says why:
// hub.ErrSlowConsumer, hub.ErrShutdown, hub.ErrSubscriberGone,
// hub.ErrTokenExpired).
func (st *Stream) Run(ctx context.Context, sink Sink) error {
	return st.Classify(st.run(ctx, sink))
}

// Classify turns a failed write into why the stream ended: a write that timed
// out means the client stopped reading fast enough, which is the same
// condition as a full queue, and ends the subscription as a slow consumer.
func (st *Stream) Classify(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", st.o.Hub.CloseSlow(st.sub), err)
	}
	return err
}

func (st *Stream) run(ctx context.Context, sink Sink) error {
	if err := st.Replay(ctx, sink); err != nil {
		return err
	}
	heartbeat := time.NewTicker(st.o.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-st.sub.Done():
			return st.sub.Err()
		case <-heartbeat.C:
			if err := sink.Heartbeat(); err != nil {
				return err
			}
			if err := sink.Flush(); err != nil {
				return err
			}
		case <-st.sub.Ready():
			if err := st.Deliver(sink); err != nil {
				return err
			}
			if err := sink.Flush(); err != nil {
				return err
			}
		}
	}
}

// Replay writes what the client missed, if it asked to resume, and flushes.
// Call it once, before Deliver; live events queue meanwhile.
func (st *Stream) Replay(ctx context.Context, sink Sink) error {
	defer st.markStarted()
	st.last = st.activeFrom
	if st.req.After != nil {
		last, err := st.replay(ctx, sink, *st.req.After)
		if err != nil {
			return err
		}
		st.last = last
	}
	return sink.Flush()
}

// Deliver writes the live events queued since the last call, without waiting
// for more and without flushing. It stops early, with the reason, if the hub
// ends the stream meanwhile: a client cut off as too slow should not keep the
// relay writing (and holding) the rest of what it had queued.
func (st *Stream) Deliver(sink Sink) error {
	for _, m := range st.sub.Next() {
		select {
		case <-st.sub.Done():
			return st.sub.Err()
		default:
		}
		// The hub may hold events this client already has: those replayed
		// from the log, or a resume id ahead of this relay.
		if !st.last.Less(m.ID) {
			continue
		}
		if m.IsReset() {
			// The log has a gap here (eventlog.ResetTopic).
			if err := sink.Reset(m.ID); err != nil {
				return err
			}
			st.last = m.ID
			continue
		}
		if err := sink.Event(m); err != nil {
			return err
		}
		st.last = m.ID
		if obs := st.observer(); obs != nil {
			obs.Delivered(m, true)
		}
	}
	return nil
}

// Notify makes the hub call fn whenever Deliver has events to write and when
// the subscription ends (see hub.Subscription.Notify): for transports that
// do not wait on a goroutine per stream.
func (st *Stream) Notify(fn func()) { st.sub.Notify(fn) }

// Err returns why the hub ended the stream, or nil while it is open.
func (st *Stream) Err() error { return st.sub.Err() }

// Done is closed when the hub ends the stream; Err then says why.
func (st *Stream) Done() <-chan struct{} { return st.sub.Done() }

// replay sends the events after `after` up to where live delivery starts, or
// a reset if some of them were pruned. It returns the last position sent.
//
// What the relay's window of the recent log holds is taken from there, the
// rest is read from the log, batch by batch; either way each event is
// matched against this stream's filter here.
//
// A replay can run for many seconds, and must follow the subscriber's filter
// as live delivery does: each batch is read with the filter the hub holds
// now, each event is matched against a filter at most replayRecheck old,
// and the replay stops as soon as the hub ends the subscription (subscriber
// deleted, token expired, queue overflowed).
func (st *Stream) replay(ctx context.Context, sink Sink, after eventlog.ID) (eventlog.ID, error) {
	cursor := after
	// horizonChecked says a fresh horizon was found at or before the
	// cursor, so what the window holds after it was not pruned then.
	horizonChecked := false
	for cursor.Less(st.activeFrom) {
		f, err := st.currentFilter()
		if err != nil {
			return cursor, err
		}
		if msgs, covered, ok := st.readWindow(cursor, f.keys); ok {
			cursor, err = st.replayRecent(ctx, sink, f, cursor, msgs, covered, &horizonChecked)
		} else {
			cursor, err = st.replayFromLog(ctx, sink, f, cursor)
		}
		if err != nil {
			return cursor, err
		}
		if cursor.Less(st.activeFrom) {
			if err := sink.Flush(); err != nil {
				return cursor, err
			}
		}
	}
	if st.activeFrom.Less(after) {
		// The client is ahead of this relay (it came from a relay further
		// along): skip live events up to its position.
		return after, nil
	}
	return st.activeFrom, nil
}

// replayRecent sends one batch taken from the window, msgs reaching
// covered, and returns where the replay goes on (where live delivery
// starts, once it sent a reset). The first batch from the window checks the
// horizon first.
//
// The window chose msgs by f's keys as they were: once f is read anew the
// batch stops before the next event it would move past, and the next
// batch is chosen by the new keys from there, so that no event is left out
// by keys older than replayRecheck (a send that waited on a slow client
// does not stretch that).
func (st *Stream) replayRecent(ctx context.Context, sink Sink, f *replayFilter, cursor eventlog.ID, msgs []*hub.Message, covered eventlog.ID, horizonChecked *bool) (eventlog.ID, error) {
	if !*horizonChecked {
		horizon, err := st.o.Horizons.Fresh(ctx)
		st.markStarted()
		if err != nil {
			return cursor, fmt.Errorf("replay for %s after %s: %w", st.req.Subscriber, cursor, err)
		}
		if cursor.Less(horizon) {
			return st.activeFrom, sink.Reset(st.activeFrom)
		}
		*horizonChecked = true
	}
	st.o.recentEvents.Add(uint64(len(msgs)))
	// passed is how far the replay has gone: the events it left out up to
	// there were left out by keys fresh when it moved past them.
	passed := cursor
	for _, m := range msgs {
		if renewed, err := f.renewed(); err != nil || renewed {
			return passed, err
		}
		if err := st.send(sink, f, &m.Event, m); err != nil {
			return cursor, err
		}
		passed = m.ID
	}
	if renewed, err := f.renewed(); err != nil || renewed {
		return passed, err
	}
	return covered, nil
}

// replayFromLog reads one batch from the log and sends it, and returns
// where the replay goes on (where live delivery starts, once the range is
// read to its end or a reset was sent).
func (st *Stream) replayFromLog(ctx context.Context, sink Sink, f *replayFilter, cursor eventlog.ID) (eventlog.ID, error) {
	events, more, pruned, err := st.readBatch(ctx, cursor, st.selector(f.keys))
	st.o.logReads.Add(1)
	// The rest of a long replay (a client far behind) is paced by its
	// client's reading, not by the turns of opening streams.
	st.markStarted()
	if err != nil {
		return cursor, err
	}
	if pruned {
		return st.activeFrom, sink.Reset(st.activeFrom)
	}
	// The filter may have changed while the batch was read.
	if err := f.refresh(); err != nil {
		return cursor, err
	}
	for i := range events {
		if err := f.check(); err != nil {
			return cursor, err
		}
		if err := st.send(sink, f, &events[i], nil); err != nil {
			return cursor, err
		}
	}
	if !more {
		return st.activeFrom, nil
	}
	return events[len(events)-1].ID, nil
}

// ReplaysFromWindow reports whether a replay from after starts from the
// relay's window of the recent log, not from the log.
func (o *Opener) ReplaysFromWindow(after eventlog.ID) bool {
	return o.hasWindow() && o.Recent.Holds(after)
}

// hasWindow reports whether replays can be served from a window of the
// recent log (which needs Horizons as well).
func (o *Opener) hasWindow() bool { return o.Recent != nil && o.Horizons != nil }

// readWindow returns the next batch of the replay from the relay's window
// of the recent log, the events keys select, and the position it reaches
// (see replay.Window.ReadFor). ok is false when the
// window cannot serve the batch (there is none, or it does not hold the
// cursor's successor, or it ends at the cursor): the batch is read from the
// log.
func (st *Stream) readWindow(cursor eventlog.ID, keys match.Keys) (msgs []*hub.Message, covered eventlog.ID, ok bool) {
	if !st.o.hasWindow() {
		return nil, cursor, false
	}
	msgs, covered, ok = st.o.Recent.ReadFor(cursor, st.activeFrom, keys, st.o.CatchupBatch, st.o.CatchupBytes)
	return msgs, covered, ok && cursor.Less(covered)
}

// send writes one replayed event if the stream's filter lets it through,
// and a reset marker whatever the filter says. m is e's message if there is
// one already (shared by every stream replaying from the window). The
// caller has checked f just before.
func (st *Stream) send(sink Sink, f *replayFilter, e *eventlog.Event, m *hub.Message) error {
	if e.IsReset() {
		// A gap in the log (eventlog.ResetTopic): the client reloads, and
		// the replay goes on after it.
		return sink.Reset(e.ID)
	}
	if !match.Matches(f.keys, st.req.Subscriber, e.Topic, e.Audience, e.Actor) {
		return nil
	}
	if m == nil {
		m = hub.NewMessage(*e)
	}
	if err := sink.Event(m); err != nil {
		return err
	}
	if obs := st.observer(); obs != nil {
		obs.Delivered(m, false)
	}
	return nil
}

// replayRecheck bounds how old the filter a replayed event is matched
// against may be: filters follow database changes within a second, and a
// replay must not lag behind that.
const replayRecheck = 100 * time.Millisecond

// replayFilter is the subscription's filter as a replay last read it.
type replayFilter struct {
	sub  *hub.Subscription
	keys match.Keys
	read time.Time
}

func (st *Stream) currentFilter() (*replayFilter, error) {
	f := &replayFilter{sub: st.sub}
	return f, f.refresh()
}

// refresh re-reads the filter, or returns why the subscription ended.
func (f *replayFilter) refresh() error {
	if err := f.sub.Err(); err != nil {
		return err
	}
	f.keys, f.read = f.sub.Keys(), time.Now()
	return nil
}

// renewed is check, and reports whether it read the filter anew.
func (f *replayFilter) renewed() (bool, error) {
	read := f.read
	err := f.check()
	return err == nil && !f.read.Equal(read), err
}

// check is refresh at most every replayRecheck; in between it costs a look
// at whether the subscription has ended.
func (f *replayFilter) check() error {
	select {
	case <-f.sub.Done():
		return f.sub.Err()
	default:
	}
	if time.Since(f.read) < replayRecheck {
		return nil
	}
	return f.refresh()
}

// selector narrows the log read of a replay to the topics and keys of keys.
func (st *Stream) selector(keys match.Keys) eventlog.Selector {
	sel := eventlog.Selector{Topics: st.req.Topics, Subscriber: st.req.Subscriber}
	for topic, ks := range keys {
		if st.req.Topics == nil {
			sel.Topics = append(sel.Topics, topic)
		}
		sel.Keys = append(sel.Keys, ks...)
	}
	return sel
}

// readBatch reads one batch of the replay and checks, in the same snapshot,
// that nothing after cursor has been pruned. more says the batch stopped at
// a bound, in events or bytes, before the end of the range.
func (st *Stream) readBatch(ctx context.Context, cursor eventlog.ID, sel eventlog.Selector) (events []eventlog.Event, more, pruned bool, err error) {
	err = pgx.BeginTxFunc(ctx, st.o.DB, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		horizon, err := eventlog.Horizon(ctx, tx)
		if err != nil {
			return err
		}
		if cursor.Less(horizon) {
			pruned = true
			return nil
		}
		events, more, err = eventlog.ReadRange(ctx, tx, cursor, st.activeFrom, sel, st.o.CatchupBatch, st.o.CatchupBytes)
		return err
	})
	if err != nil {
		return nil, false, false, fmt.Errorf("replay for %s after %s: %w", st.req.Subscriber, cursor, err)
	}
	return events, more, pruned, nil
}
