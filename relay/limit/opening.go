package limit

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// ErrBusy: the relay is already opening as many streams as it lets wait
// (HTTP 503 with Retry-After): the client should come back in a moment,
// here or on another relay. Open streams are not affected.
var ErrBusy = errors.New("this relay is busy opening other streams; retry shortly, here or on another relay")

// Opening paces the work of opening streams: loading the subscriber's
// filter and starting its replay from the log. That work is the database's
// and the CPU's, shared with the streams already open; a reconnect storm
// (a relay died, its clients all come here) must not take so much of it at
// once that live deliveries stall, nor queue so many opens that they time
// out one after the other instead of being answered.
//
// At most Concurrency opens do that work at once; others wait their turn,
// first come first served, for at most Wait. At most Max opens are in
// progress or waiting: one more is refused at once with ErrBusy, as is one
// that waited Wait without getting its turn. A nil *Opening admits
// everything at once.
type Opening struct {
	turns chan struct{}
	max   int
	wait  time.Duration

	mu      sync.Mutex
	opening int // in progress or waiting
	entered int // of those, in progress without a turn (Enter)
}

// NewOpening returns an Opening letting concurrency opens work at once
// (at least 1), bound be in progress or waiting (0: unlimited), each
// waiting at most wait for its turn.
func NewOpening(concurrency, bound int, wait time.Duration) *Opening {
	return &Opening{turns: make(chan struct{}, max(concurrency, 1)), max: bound, wait: wait}
}

// Acquire waits for a turn to open a stream, or refuses with ErrBusy (at
// once if max opens are already in progress or waiting, or after waiting
// for the Opening's wait), or with ctx's error if ctx ends first. On
// success the caller must call release once the work is done (extra calls
// are ignored).
func (o *Opening) Acquire(ctx context.Context) (release func(), err error) {
	if o == nil {
		return func() {}, nil
	}
	o.mu.Lock()
	if o.max > 0 && o.opening >= o.max {
		o.mu.Unlock()
		return nil, ErrBusy
	}
	o.opening++
	o.mu.Unlock()
	if err := o.take(ctx); err != nil {
		o.leave()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-o.turns
			o.leave()
		})
	}, nil
}

// Enter counts an open that needs no turn toward the bound, refusing with
// ErrBusy at once if max opens are already in progress or waiting. It is
// for opens whose only database work is their filter load (a stream that
// does not resume, a GraphQL connection_init): filter loads are shared and
// bounded by the filter batcher (a few queries at once, many subscribers
// each), and a turn each would only hold them back from being gathered.
// Turns are for replays, which read the log on a pool connection each.
func (o *Opening) Enter() (release func(), err error) {
	if o == nil {
		return func() {}, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.max > 0 && o.opening >= o.max {
		return nil, ErrBusy
	}
	o.opening++
	o.entered++
	var once sync.Once
	return func() {
		once.Do(func() {
			o.mu.Lock()
			o.opening--
			o.entered--
			o.mu.Unlock()
		})
	}, nil
}

// take waits for a turn: a slot in turns, which a channel hands out in the
// order the waiters came.
func (o *Opening) take(ctx context.Context) error {
	select {
	case o.turns <- struct{}{}:
		return nil
	default:
	}
	timer := time.NewTimer(o.wait)
	defer timer.Stop()
	select {
	case o.turns <- struct{}{}:
		return nil
	case <-timer.C:
		return ErrBusy
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *Opening) leave() {
	o.mu.Lock()
	o.opening--
	o.mu.Unlock()
}

// Working returns how many opens are doing their work now.
func (o *Opening) Working() int {
	if o == nil {
		return 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.turns) + o.entered
}

// Waiting returns how many opens wait for their turn.
func (o *Opening) Waiting() int {
	if o == nil {
		return 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	// Read under the lock that counts them: a release between the two reads
	// cannot make the difference negative.
	return max(o.opening-o.entered-len(o.turns), 0)
}

// RetryAfter is the delay suggested to a client refused with ErrBusy: at
// least a second, spread up to RetryAfterSpread, so that the clients of one
// storm do not all come back in the same second.
func (o *Opening) RetryAfter() time.Duration {
	return time.Second + rand.N(RetryAfterSpread)
}

// RetryAfterSpread is how far beyond one second the delays RetryAfter
// suggests are spread.
const RetryAfterSpread = 4 * time.Second
