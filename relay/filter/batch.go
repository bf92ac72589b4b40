package filter

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Batcher loads the filters of subscribers whose streams are opening, many
// per query: the first request is loaded at once, and requests that arrive
// while a load runs wait for it and go into the next one together. A relay
// restart that sends thousands of clients reconnecting at once then costs a
// few queries, not one per client. Up to loadsAtOnce queries run at once,
// so that a slow one (a busy database, a large batch) does not hold every
// other opening stream in line behind it.
type Batcher struct {
	q       Querier
	gen     func() uint64
	max     int
	timeout time.Duration

	mu      sync.Mutex
	queue   []*batch
	running int // drivers running
}

// loadsAtOnce bounds the filter queries one relay runs at the same time: a
// few use the pool's spare connections (--pool-size, 10 by default) while
// opens queue up; more would take connections the replays need and add
// load to a database that is already the bottleneck.
const loadsAtOnce = 3

type batch struct {
	subscribers []string
	done        chan struct{}
	gen         uint64
	filters     map[string]Filter
	err         error
	// failed holds the errors of subscribers whose filter alone failed to
	// load (see load).
	failed map[string]error
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
	// Requests share queries once loadsAtOnce are running: until then a
	// request is loaded at once, and a burst fills the queue behind them.
	start := b.running < loadsAtOnce
	if start {
		b.running++
	}
	b.mu.Unlock()
	if start {
		// Ends as soon as the queue is empty; every request it serves waits
		// for it, so it never outlives the work it was started for.
		go b.drive()
	}
	select {
	case <-bt.done:
		if err := bt.failed[subscriber]; err != nil {
			return Filter{}, 0, err
		}
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
			b.running--
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
		bt.filters, bt.failed, bt.err = b.load(ctx, bt.subscribers)
		cancel()
		close(bt.done)
	}
}

// load loads a batch. If the server rejects the query's data (SQLSTATE
// class 22), the fault may lie with one subscriber's id: each is then loaded
// alone, so that it fails only its own stream. Any other failure (the
// connection, a timeout) fails them all without retries, which would only
// multiply the load on a struggling database.
func (b *Batcher) load(ctx context.Context, subscribers []string) (filters map[string]Filter, failed map[string]error, err error) {
	filters, err = Load(ctx, b.q, subscribers)
	var pgErr *pgconn.PgError
	if err == nil || len(subscribers) == 1 || !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "22") {
		return filters, nil, err
	}
	filters = make(map[string]Filter, len(subscribers))
	failed = map[string]error{}
	for _, id := range subscribers {
		f, err := Load(ctx, b.q, []string{id})
		if err != nil {
			failed[id] = err
			continue
		}
		filters[id] = f[id]
	}
	return filters, failed, nil
}
