package filter

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Batcher loads the filters of subscribers whose streams are opening, many
// per query: the first request is loaded at once, and requests that arrive
// while a load runs wait for it and go into the next one together. A relay
// restart that sends thousands of clients reconnecting at once then costs a
// few queries, not one per client.
type Batcher struct {
	q       Querier
	gen     func() uint64
	max     int
	timeout time.Duration

	mu      sync.Mutex
	queue   []*batch
	running bool
}

type batch struct {
	subscribers []string
	done        chan struct{}
	gen         uint64
	filters     map[string]Filter
	err         error
}

// NewBatcher returns a Batcher loading through q at most max subscribers per
// query. gen is called once per query, before it runs, for the generation the
// loaded filters carry (see Target.NextGeneration).
func NewBatcher(q Querier, gen func() uint64, max int) *Batcher {
	return &Batcher{q: q, gen: gen, max: max, timeout: 10 * time.Second}
}

// Load returns subscriber's filter and the generation it was loaded at.
func (b *Batcher) Load(ctx context.Context, subscriber string) (Filter, uint64, error) {
	b.mu.Lock()
	n := len(b.queue)
	if n == 0 || len(b.queue[n-1].subscribers) >= b.max {
		b.queue = append(b.queue, &batch{done: make(chan struct{})})
	}
	bt := b.queue[len(b.queue)-1]
	if !slices.Contains(bt.subscribers, subscriber) {
		bt.subscribers = append(bt.subscribers, subscriber)
	}
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start {
		// Ends as soon as the queue is empty; every request it serves waits
		// for it, so it never outlives the work it was started for.
		go b.drive()
	}
	select {
	case <-bt.done:
		return bt.filters[subscriber], bt.gen, bt.err
	case <-ctx.Done():
		return Filter{}, 0, ctx.Err()
	}
}

// drive runs queued batches one after the other until none is left.
func (b *Batcher) drive() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		bt := b.queue[0]
		b.queue = b.queue[1:]
		b.mu.Unlock()

		bt.gen = b.gen()
		// Not the requester's context: one client giving up must not fail
		// the others in its batch.
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		bt.filters, bt.err = Load(ctx, b.q, bt.subscribers)
		cancel()
		close(bt.done)
	}
}
