// Package hub fans events out to connected subscriptions: it matches each
// event against the index of subscriber filters and appends it to the bounded
// queue of every recipient. It never waits for a client: a subscription whose
// queue is full, in events or in bytes, is closed, and its client resumes
// from its last event id.
package hub

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/match"
)

// Reasons a subscription ends, other than its client leaving.
var (
	ErrSlowConsumer   = errors.New("slow consumer: the client fell too far behind; resume with the last event id")
	ErrSubscriberGone = errors.New("the subscriber no longer exists")
	ErrShutdown       = errors.New("the relay is shutting down; reconnect")
	ErrTokenExpired   = errors.New("the token has expired; reconnect with a fresh token and the last event id")
	ErrClosed         = errors.New("subscription closed")
)

// Message is an event as delivered: the same Message is shared by every
// recipient, and each wire format is encoded once, by whichever transport
// needs it first.
type Message struct {
	eventlog.Event
	// Published is when the hub took the event to fan it out (zero for a
	// message built for a replay). A write timed from it measures the
	// relay's own share of a delivery's latency: matching, queueing and the
	// turns of the writers, none of the database's.
	Published time.Time

	sseOnce sync.Once
	sse     []byte
	wsOnce  sync.Once
	ws      []byte
}

// NewMessage wraps an event for delivery.
func NewMessage(e eventlog.Event) *Message { return &Message{Event: e} }

// SSE returns the event as a Server-Sent Events frame.
func (m *Message) SSE() []byte {
	m.sseOnce.Do(func() {
		id := m.ID.String()
		b := make([]byte, 0, len(id)+len(m.Topic)+len(m.Payload)+24)
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, "\nevent: "...)
		b = append(b, m.Topic...)
		b = append(b, "\ndata: "...)
		b = append(b, m.Payload...)
		b = append(b, "\n\n"...)
		m.sse = b
	})
	return m.sse
}

// messageOverhead is what a queued message costs besides its topic and
// payload (the struct, its id, the framing), rounded up: it keeps a flood of
// tiny events from looking free to the byte bound.
const messageOverhead = 128

// Size is what the message counts against a queue's byte bound: the size of
// the row it carries, which is also about the size of each wire encoding.
func (m *Message) Size() int { return messageOverhead + len(m.Topic) + len(m.Payload) }

// WS returns the event as a WebSocket text message:
// {"id":"…","topic":"…","data":{…row…}}.
func (m *Message) WS() []byte {
	m.wsOnce.Do(func() {
		id := m.ID.String()
		b := make([]byte, 0, len(id)+len(m.Topic)+len(m.Payload)+32)
		// id is hex and '-', topics are [a-z0-9_]: neither needs escaping.
		b = append(b, `{"id":"`...)
		b = append(b, id...)
		b = append(b, `","topic":"`...)
		b = append(b, m.Topic...)
		b = append(b, `","data":`...)
		b = append(b, m.Payload...)
		b = append(b, '}')
		m.ws = b
	})
	return m.ws
}

// Stats are the hub's counters since it started.
type Stats struct {
	Published     uint64 // events received from the log
	Enqueued      uint64 // deliveries queued to subscriptions
	SlowConsumers uint64 // subscriptions closed because their queue was full (in events or bytes) or a write timed out
	Subscriptions int    // open now
}

// Hub holds the connected subscriptions of one relay.
type Hub struct {
	queueSize  int
	queueBytes int

	mu       sync.Mutex
	index    *match.Index[*Subscription]
	bySub    map[string]map[*Subscription]struct{}
	position eventlog.ID
	shutdown error

	gen           atomic.Uint64
	published     atomic.Uint64
	enqueued      atomic.Uint64
	slowConsumers atomic.Uint64
}

// New returns a hub whose subscriptions queue at most queueSize events and
// at most queueBytes bytes of them (0: no byte bound), as Message.Size counts
// them. An event larger than queueBytes is still queued when it finds the
// queue empty, so a client that keeps up receives rows of any size.
func New(queueSize, queueBytes int) *Hub {
	return &Hub{
		queueSize:  queueSize,
		queueBytes: queueBytes,
		index:      match.New[*Subscription](),
		bySub:      map[string]map[*Subscription]struct{}{},
	}
}

// Position returns the id of the last event published (where a new
// subscription without a resume id starts).
func (h *Hub) Position() eventlog.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.position
}

// Start sets the position before the first Publish.
func (h *Hub) Start(at eventlog.ID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.position = at
}

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	n := h.index.Len()
	h.mu.Unlock()
	return Stats{
		Published:     h.published.Load(),
		Enqueued:      h.enqueued.Load(),
		SlowConsumers: h.slowConsumers.Load(),
		Subscriptions: n,
	}
}

// Subscribe registers a subscription of subscriber to topics (nil: every
// topic). It receives nothing until Activate gives it a filter.
func (h *Hub) Subscribe(subscriber string, topics []string) (*Subscription, error) {
	s := &Subscription{
		subscriber: subscriber,
		topics:     topics,
		hub:        h,
		max:        h.queueSize,
		maxBytes:   h.queueBytes,
		ready:      make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	s.entry = &match.Entry[*Subscription]{Subscriber: subscriber, Value: s}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shutdown != nil {
		return nil, h.shutdown
	}
	set := h.bySub[subscriber]
	if set == nil {
		set = map[*Subscription]struct{}{}
		h.bySub[subscriber] = set
	}
	set[s] = struct{}{}
	h.index.Set(s.entry, nil)
	return s, nil
}

// Keys returns the keys one of subscriber's subscriptions listens to (nil if
// it has none): for inspection and tests.
func (h *Hub) Keys(subscriber string) match.Keys {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.bySub[subscriber] {
		return s.entry.Keys()
	}
	return nil
}

// NextGeneration returns a new filter generation: take it before loading a
// filter, so a filter loaded later always replaces one loaded earlier.
func (h *Hub) NextGeneration() uint64 { return h.gen.Add(1) }

// Activate installs the filter loaded at generation gen on s and returns the
// position from which s receives live events: everything after it reaches
// its queue, everything up to it must come from the log. It fails with
// ErrSubscriberGone if the filter says the subscriber does not exist.
func (h *Hub) Activate(s *Subscription, gen uint64, f filter.Filter) (eventlog.ID, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.apply(s, gen, f)
	if s.err != nil {
		return eventlog.ID{}, s.err
	}
	return s.activeFrom, nil
}

// ApplyFilters installs filters reloaded at generation gen on every
// subscription of those subscribers (filter.Target).
func (h *Hub) ApplyFilters(gen uint64, filters map[string]filter.Filter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, f := range filters {
		for s := range h.bySub[id] {
			h.apply(s, gen, f)
		}
	}
}

// apply installs f on s unless a newer filter is already there. Called with
// h.mu held.
func (h *Hub) apply(s *Subscription, gen uint64, f filter.Filter) {
	if s.err != nil || gen <= s.gen {
		return
	}
	s.gen = gen
	if !f.Exists {
		h.closeLocked(s, ErrSubscriberGone)
		return
	}
	keys := restrict(f.Keys, s.topics)
	// The periodic full reload mostly finds nothing changed; re-indexing
	// every subscription would hold the hub's lock, and delay events, for
	// nothing.
	if !s.active || !maps.EqualFunc(s.entry.Keys(), keys, slices.Equal) {
		h.index.Set(s.entry, keys)
	}
	if !s.active {
		s.active = true
		s.activeFrom = h.position
	}
}

// restrict keeps the keys of the subscribed topics only.
func restrict(keys match.Keys, topics []string) match.Keys {
	if topics == nil {
		return keys
	}
	out := match.Keys{}
	for _, t := range topics {
		if ks, ok := keys[t]; ok {
			out[t] = ks
		}
	}
	return out
}

// Connected returns the ids of the subscribers with at least one
// subscription (filter.Target).
func (h *Hub) Connected() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.bySub))
	for id := range h.bySub {
		ids = append(ids, id)
	}
	return ids
}

// Publish delivers events, which must follow the hub's position in log
// order, to every matching subscription. Events at or before the position
// are skipped.
func (h *Hub) Publish(events []eventlog.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.publishLocked(events)
}

// PublishAfter publishes events only if they follow exactly from the hub's
// position (the first one's predecessor is prev), and reports whether it did.
// Announced events use it: a relay that is behind or ahead reads the log
// instead, so nothing is skipped.
func (h *Hub) PublishAfter(prev eventlog.ID, events []eventlog.Event) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.position != prev {
		return false
	}
	h.publishLocked(events)
	return true
}

func (h *Hub) publishLocked(events []eventlog.Event) {
	// One clock reading for the batch: its events reached the hub together,
	// and a later one waiting for the earlier ones' recipients is part of
	// its fan-out.
	now := time.Now()
	for i := range events {
		e := &events[i]
		if !h.position.Less(e.ID) {
			continue // already published: a re-read after a reconnect
		}
		h.position = e.ID
		h.published.Add(1)
		var msg *Message
		if e.IsReset() {
			// A gap in the log: every live stream must hear of it.
			msg = NewMessage(*e)
			msg.Published = now
			for _, set := range h.bySub {
				for s := range set {
					if s.active && s.err == nil {
						h.enqueue(s, msg)
					}
				}
			}
			continue
		}
		h.index.Match(e.Topic, e.Audience, e.Actor, func(entry *match.Entry[*Subscription]) {
			if msg == nil {
				msg = NewMessage(*e)
				msg.Published = now
			}
			h.enqueue(entry.Value, msg)
		})
	}
}

// enqueue appends msg to s's queue, closing s if that would put it over its
// bound in events or in bytes. Called with h.mu held.
func (h *Hub) enqueue(s *Subscription, msg *Message) {
	size := msg.Size()
	s.mu.Lock()
	// The byte bound applies only behind another event: the first one in
	// the queue is the one the client is about to get, whatever its size.
	overBytes := s.maxBytes > 0 && len(s.queue) > 0 && s.bytes+size > s.maxBytes
	if len(s.queue) >= s.max || overBytes {
		s.mu.Unlock()
		h.slowConsumers.Add(1)
		h.closeLocked(s, ErrSlowConsumer)
		return
	}
	s.queue = append(s.queue, msg)
	s.bytes += size
	s.mu.Unlock()
	h.enqueued.Add(1)
	if s.notify != nil {
		s.notify()
		return
	}
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// CloseSlow ends s as a slow consumer because a write to its client timed
// out, unless the hub already ended it; it returns why s ended. A client is
// counted as slow once, whichever noticed first.
func (h *Hub) CloseSlow(s *Subscription) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.err == nil {
		h.slowConsumers.Add(1)
		h.closeLocked(s, ErrSlowConsumer)
	}
	return s.err
}

// End ends s with err, unless it has already ended: for reasons decided
// outside the hub, such as the subscriber's token expiring.
func (h *Hub) End(s *Subscription, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeLocked(s, err)
}

// closeLocked ends s with err. Called with h.mu held.
func (h *Hub) closeLocked(s *Subscription, err error) {
	if s.err != nil {
		return
	}
	s.err = err
	h.index.Remove(s.entry)
	if set := h.bySub[s.subscriber]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(h.bySub, s.subscriber)
		}
	}
	s.mu.Lock()
	s.queue, s.spare, s.bytes = nil, nil, 0
	s.mu.Unlock()
	close(s.done)
	if s.notify != nil {
		s.notify()
	}
}

// Shutdown closes every subscription with ErrShutdown and refuses new ones.
func (h *Hub) Shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdown = ErrShutdown
	for _, set := range h.bySub {
		for s := range set {
			h.closeLocked(s, ErrShutdown)
		}
	}
}

// CloseSubscriber closes every subscription of subscriber with err.
func (h *Hub) CloseSubscriber(subscriber string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.bySub[subscriber] {
		h.closeLocked(s, err)
	}
}

// Subscription is one client connection's stream of events.
type Subscription struct {
	subscriber string
	topics     []string
	hub        *Hub
	entry      *match.Entry[*Subscription]
	max        int
	maxBytes   int
	ready      chan struct{}
	done       chan struct{}

	// guarded by hub.mu; err is also read once done is closed
	notify     func()
	err        error
	gen        uint64
	active     bool
	activeFrom eventlog.ID

	mu    sync.Mutex
	queue []*Message
	spare []*Message
	bytes int // Size of the queued messages
}

// Subscriber returns the subscriber id.
func (s *Subscription) Subscriber() string { return s.subscriber }

// Ready is signalled when events are queued.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Notify makes the hub call fn, instead of signalling Ready, whenever events
// are queued and when the subscription ends: a transport that serves many
// connections from a few goroutines learns which ones have work without a
// goroutine waiting on each. fn runs with the hub's lock held: it must not
// block or call back into the hub.
func (s *Subscription) Notify(fn func()) {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.notify = fn
}

// Done is closed when the hub ends the subscription; Err says why.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended, or nil while it is open. It does
// not take the hub's lock: a transport asks at every turn of every stream,
// and the hub holds its lock for the whole fan-out of an event, so waiting
// for it would hold every writer back until the last recipient is queued.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		// closeLocked sets err, once, before it closes done.
		return s.err
	default:
		return nil
	}
}

// Keys returns the subscription's current filter keys (a snapshot).
func (s *Subscription) Keys() match.Keys {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.entry.Keys()
}

// Next takes every queued event, oldest first. The returned slice is valid
// until the next call.
func (s *Subscription) Next() []*Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.queue
	clear(s.spare)
	s.queue = s.spare[:0]
	s.spare = out
	s.bytes = 0
	return out
}

// Close ends the subscription from the client's side.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.closeLocked(s, ErrClosed)
}
