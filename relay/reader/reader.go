// Package reader turns what the listener hears into the hub's position: it
// publishes the sequencer's sealed announcements when they follow from the
// hub's position, and otherwise reads the durable log after it. It is the
// only writer of the hub.
//
// A notification is a claim by an unauthenticated session: only what opens
// with the relays' key may say what is settled or hand over rows, and the
// log is read on a safety poll whatever the channel says.
package reader

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// Hub is where events are published, in log order.
type Hub interface {
	// Position is the id of the last event published.
	Position() eventlog.ID
	// Publish appends events that follow the position.
	Publish(events []eventlog.Event)
	// PublishAfter publishes events only if prev is the position.
	PublishAfter(prev eventlog.ID, events []eventlog.Event) bool
}

// Log reads the durable log in batches; full reports that a read stopped at
// the batch's bounds, so there may be more to read.
type Log interface {
	// ReadBetween reads events in (after, upto], without a horizon: the
	// sequencer announced them as settled.
	ReadBetween(ctx context.Context, after, upto eventlog.ID, b eventlog.Batch) (events []eventlog.Event, full bool, err error)
	// ReadAfter reads settled events after after, up to this relay's own
	// horizon.
	ReadAfter(ctx context.Context, after eventlog.ID, b eventlog.Batch) (events []eventlog.Event, full bool, err error)
	// Forget drops what the log remembers between reads (the list of other
	// databases' transactions), so the next read looks it up afresh.
	Forget()
}

// Opener opens sealed announcements (see relay/seal).
type Opener interface {
	Open(channel string, sender uint32, payload string) ([]byte, error)
}

// Config tunes the reader.
type Config struct {
	// Channel is the one announcements are sealed for.
	Channel string
	// SafetyPoll is the longest time between two full reads of the log.
	SafetyPoll time.Duration
	// Batch is how many events one log read returns at most.
	Batch int
	// BatchBytes bounds the rows of one log read (0: no bound): a burst of
	// large rows is published in slices a fast client's queue can hold.
	BatchBytes int
	// Recent, if set, is given every run of events before it is published
	// (see replay.Window): what the hub hears, replays can be served from.
	Recent Recorder
}

// Recorder keeps what the reader hears. Runs are every event of the log in
// (prev, position of the last event], in order; they arrive from the
// listener and from the reader's loop, so not always in log order.
type Recorder interface {
	Record(prev eventlog.ID, events []eventlog.Event)
}

// Reader is the loop that feeds the hub.
type Reader struct {
	cfg Config
	hub Hub
	log Log
	key Opener
	lg  *slog.Logger

	wake chan struct{}
	// fullRead asks for a read past what was announced, up to this relay's
	// own horizon: after the listener (re)connects and on the safety poll.
	fullRead atomic.Bool
	// settled is the newest position the sequencer announced: every event
	// up to it is committed, whatever this relay's own horizon says.
	settledMu sync.Mutex
	settled   eventlog.ID

	// rowSize is the mean row size of the last read (0: none yet), so that
	// a burst of large rows is not asked for a full batch at a time only to
	// be cut at the byte bound after the server sent it all.
	rowSize int

	listening atomic.Bool
	caughtUp  atomic.Bool
	announced atomic.Uint64
	catchup   atomic.Uint64
	forged    forgeries
}

// New returns a Reader publishing to hub what the announcements opened with
// key and the log say.
func New(cfg Config, hub Hub, log Log, key Opener, lg *slog.Logger) *Reader {
	return &Reader{cfg: cfg, hub: hub, log: log, key: key, lg: lg, wake: make(chan struct{}, 1)}
}

// Ready reports whether the listener is connected and the log has been read
// since it (re)connected.
func (r *Reader) Ready() bool { return r.listening.Load() && r.caughtUp.Load() }

// Listening reports whether the listener is connected.
func (r *Reader) Listening() bool { return r.listening.Load() }

// CaughtUp reports whether the log has been read since the listener last
// (re)connected.
func (r *Reader) CaughtUp() bool { return r.caughtUp.Load() }

// EventsAnnounced counts events published straight from announcements,
// without a log read.
func (r *Reader) EventsAnnounced() uint64 { return r.announced.Load() }

// CatchupEvents counts events read while the relay was catching up (after
// the listener reconnected, until the log was read to its end).
func (r *Reader) CatchupEvents() uint64 { return r.catchup.Load() }

// Forged counts notifications on the channel that no relay sealed.
func (r *Reader) Forged() uint64 { return r.forged.count.Load() }

// Announced publishes announced events straight to the hub when they follow
// from its position, and otherwise (a relay behind or ahead, events too large
// to announce) wakes the loop to read the log. from is the sending session's
// process id; 0 with an empty payload means the listener (re)connected.
//
// What does not open is ignored, not even taken as a hint: a flood of
// forgeries must not turn into a flood of log reads. It never blocks.
func (r *Reader) Announced(payload string, from uint32) {
	if from == 0 {
		r.readAll() // (re)connected: read what may have been missed
		return
	}
	plain, err := r.key.Open(r.cfg.Channel, from, payload)
	if err != nil {
		r.forged.note(r.lg, from)
		return
	}
	a, err := eventlog.DecodeAnnouncement(plain)
	if err != nil {
		r.lg.Warn("unreadable announcement from the sequencer", "err", err)
		r.readAll()
		return
	}
	r.noteSettled(a.Upto)
	// Recorded before it is published, so a stream that goes live at the
	// hub's position finds everything before it in the window. A run that
	// starts past the hub's position is not published, and would leave a
	// gap after the window, which then starts over and loses every event
	// it held: it is left for the log read it wakes, which records it from
	// the hub's position on. (Everything the hub published was recorded
	// first, so a run that starts at or before the hub's position follows
	// on from the window.)
	if !r.hub.Position().Less(a.Prev) {
		r.record(a.Prev, a.Events)
	}
	if len(a.Events) > 0 && r.hub.PublishAfter(a.Prev, a.Events) {
		r.announced.Add(uint64(len(a.Events)))
		return
	}
	if !r.hub.Position().Less(a.Upto) {
		return // nothing new for this relay
	}
	r.wakeUp()
}

// Connected records whether the listener is connected.
func (r *Reader) Connected(up bool) {
	r.listening.Store(up)
	// Ready again only after a read of the log that began after the
	// listener was back; reads until then are catch-up (and counted so).
	r.caughtUp.Store(false)
	if up {
		r.readAll()
	}
}

func (r *Reader) noteSettled(upto eventlog.ID) {
	r.settledMu.Lock()
	defer r.settledMu.Unlock()
	if r.settled.Less(upto) {
		r.settled = upto
	}
}

func (r *Reader) settledUpto() eventlog.ID {
	r.settledMu.Lock()
	defer r.settledMu.Unlock()
	return r.settled
}

// readAll wakes the loop for a read up to this relay's own horizon.
func (r *Reader) readAll() {
	r.fullRead.Store(true)
	r.wakeUp()
}

func (r *Reader) wakeUp() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes what it reads from the log whenever woken, and reads all
// there is at least every SafetyPoll, until ctx is done.
func (r *Reader) Run(ctx context.Context) error {
	ticker := time.NewTicker(r.cfg.SafetyPoll)
	defer ticker.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		case <-ticker.C:
			r.fullRead.Store(true)
		}
		full := r.fullRead.Swap(false)
		err := r.drain(ctx, full)
		switch {
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			r.caughtUp.Store(false)
			r.fullRead.Store(true) // the next read starts over
			if !failing {
				r.lg.Warn("read event log; retrying", "err", err)
			}
			failing = true
		case failing:
			r.lg.Info("reading the event log again")
			failing = false
		}
	}
}

// drain reads the log from the hub's position up to what the sequencer
// announced and, if full, on up to this relay's own horizon.
//
// The two differ: the horizon ignores other databases' transactions by a
// list each reader refreshes on its own schedule, so a relay may still count
// as its own a transaction the sequencer already knew to be foreign, and
// stop short of events the sequencer announced. Nothing would wake it again
// before the safety poll, so announced ranges are read without the horizon:
// the sequencer vouched that every transaction in them has ended.
func (r *Reader) drain(ctx context.Context, full bool) error {
	announcedDone := false
	if full {
		// A full read follows a reconnect or the safety poll: both are
		// there to catch what announcements missed, so they must not miss
		// it again by trusting an old list.
		r.log.Forget()
	}
	for {
		// While the listener is (re)connecting, reads are catch-up too.
		catchingUp := !r.caughtUp.Load() || !r.listening.Load()
		pos := r.hub.Position()
		var events []eventlog.Event
		var err error
		upto := r.settledUpto()
		announced := !announcedDone && pos.Less(upto)
		var more bool
		batch := r.batch()
		switch {
		case announced:
			events, more, err = r.log.ReadBetween(ctx, pos, upto, batch)
			// Short of a batch: up to the announced position, or every
			// event in between was pruned.
			announcedDone = !more
		case full:
			events, more, err = r.log.ReadAfter(ctx, pos, batch)
		default:
			return nil
		}
		if err != nil {
			return err
		}
		r.noteRowSize(events)
		if catchingUp {
			r.catchup.Add(uint64(len(events)))
		}
		r.record(pos, events)
		r.hub.Publish(events)
		if announced || more {
			continue
		}
		r.caughtUp.Store(true)
		return nil
	}
}

func (r *Reader) record(prev eventlog.ID, events []eventlog.Event) {
	if r.cfg.Recent != nil && len(events) > 0 {
		r.cfg.Recent.Record(prev, events)
	}
}

// batch returns the bounds of the next read: as many events as the last
// read's rows suggest fit the byte bound, within Batch.
func (r *Reader) batch() eventlog.Batch {
	b := eventlog.Batch{Events: r.cfg.Batch, Bytes: r.cfg.BatchBytes}
	if b.Bytes > 0 && r.rowSize > 0 {
		b.Events = max(1, min(b.Events, b.Bytes/r.rowSize+1))
	}
	return b
}

func (r *Reader) noteRowSize(events []eventlog.Event) {
	if len(events) == 0 {
		return
	}
	total := 0
	for _, e := range events {
		total += len(e.Payload)
	}
	r.rowSize = max(1, total/len(events))
}
