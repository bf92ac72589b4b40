package relaybench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Clients are the subscribers of one load-generator process: they open
// streams, read them until closed (reopening them where the relay went away,
// with Reconnect), and account for every delivery.
type Clients struct {
	Transport Transport
	Sent      *Sent
	// Measured is the range of template sequence numbers whose latency
	// counts (the warm-up's do not).
	MeasureFrom, MeasureTo int
	Latency                *Histogram
	// FromSend is the latency from the insert being sent: an upper bound
	// that includes the insert's execution and commit (WAL flush), and
	// does not depend on when the producer got to see its acknowledgement.
	FromSend    *Histogram
	ConnectTime *Histogram
	// Undisturbed is the latency of streams never reopened, per second of
	// the run's clock: the live streams' latency before, during and after
	// a reconnect storm. Resumed is the latency of deliveries on reopened
	// streams (it includes the time their relay was gone).
	Undisturbed *Timeline
	Resumed     *Histogram
	// Reconnect, if set, reopens a stream that ends for any reason but
	// Close, on another relay, resuming after the last id it saw.
	Reconnect *Reconnect
	// DeferUnacked makes a delivery whose commit acknowledgement is not
	// known yet wait for it (see Ack) instead of counting it as seen before
	// the acknowledgement: in a worker process the acknowledgements arrive
	// through a pipe, a little after the producer saw them.
	DeferUnacked bool

	perSeq     []atomic.Int32 // deliveries of each template
	openedAt   []atomic.Int32 // streams opened per location (a template's audience among them)
	delivered  atomic.Int64
	foreign    atomic.Int64 // events that are not this run's templates
	misordered atomic.Int64 // ids not increasing within a stream (duplicates too)
	early      atomic.Int64 // delivered before the producer saw the commit ack
	slow       atomic.Int64
	ended      atomic.Int64 // streams that ended for another reason
	live       atomic.Int64 // streams open or being reopened
	reopened   atomic.Int64
	reopenErrs atomic.Int64 // attempts to reopen that failed (and were retried)
	withoutID  atomic.Int64 // streams reopened before they had seen any event
	gaveUp     atomic.Int64 // streams that could not be reopened before the run ended
	lastReopen atomic.Int64 // run clock of the last successful reopen
	lastReplay atomic.Int64 // run clock of the last delivery, on a reopened stream, of an event committed before it reopened
	// lastErr holds the last stream error as a pointer: errors of
	// different types cannot share an atomic.Value.
	lastErr atomic.Pointer[error]

	pendMu  sync.Mutex
	pending map[int][]pendingDelivery

	ctx  context.Context
	stop context.CancelFunc
	// closing is set once Close has begun: read errors after it are ours,
	// not the relay's.
	closing atomic.Bool
	mu      sync.Mutex
	slots   []*slot
	wg      sync.WaitGroup
}

// Reconnect is how streams come back when their relay goes away, as a
// client library with an EventSource-like retry does: after a random delay
// within Window (so that the clients of one relay do not all arrive at
// once), on a relay other than the one that failed, with Last-Event-ID.
type Reconnect struct {
	Relays []*url.URL
	Window time.Duration
	// Retry is the delay range of a later attempt after a failed one; it
	// doubles with each failure in a row, and a refusal's Retry-After is
	// honoured (see retryDelay).
	Retry time.Duration
}

type pendingDelivery struct {
	at, reopenedAt int64
	reopened       bool
}

// slot is one subscriber's stream, replaced when it is reopened.
type slot struct {
	target Target
	relay  int
	mu     sync.Mutex
	st     streamclient.Stream
}

// NewClients prepares accounting for up to templates templates.
func NewClients(t Transport, sent *Sent, templates int) *Clients {
	ctx, stop := context.WithCancel(context.Background())
	return &Clients{Transport: t, Sent: sent, Latency: &Histogram{}, FromSend: &Histogram{}, ConnectTime: &Histogram{},
		Undisturbed: &Timeline{}, Resumed: &Histogram{},
		perSeq: make([]atomic.Int32, templates), pending: map[int][]pendingDelivery{}, ctx: ctx, stop: stop}
}

// SetLocations makes the clients count opened streams per location, so
// that a stream that failed to open is told apart from a lost delivery.
func (c *Clients) SetLocations(n int) { c.openedAt = make([]atomic.Int32, n) }

// Target is one stream to open: which relay (its index among the run's
// relays, and its URL), from which source address, as whom (and the
// subscriber's location).
type Target struct {
	Loc   int
	Relay int
	Base  *url.URL
	Dial  streamclient.Dialer
	Token string
}

// Connect opens one stream per target, at most concurrency at a time, and
// starts reading each. It returns the number opened and the errors of those
// that failed (at most a few of them, with the total).
func (c *Clients) Connect(ctx context.Context, targets []Target, concurrency int, timeout time.Duration) (int, []error) {
	var opened atomic.Int64
	var failed atomic.Int64
	var errMu sync.Mutex
	var errs []error
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for _, tg := range targets {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			octx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			st, err := c.Transport.Open(octx, tg.Dial, tg.Base, tg.Token, []string{"templates"}, "")
			if err != nil {
				failed.Add(1)
				errMu.Lock()
				if len(errs) < 5 {
					errs = append(errs, err)
				}
				errMu.Unlock()
				return
			}
			c.ConnectTime.Record(time.Since(start))
			opened.Add(1)
			if tg.Loc < len(c.openedAt) {
				c.openedAt[tg.Loc].Add(1)
			}
			s := &slot{target: tg, relay: tg.Relay, st: st}
			c.mu.Lock()
			c.slots = append(c.slots, s)
			c.mu.Unlock()
			c.live.Add(1)
			c.wg.Add(1)
			go c.run(s)
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%d of %d streams failed to open", n, len(targets)))
	}
	return int(opened.Load()), errs
}

// run reads s until it ends, and reopens it while Reconnect says so.
func (c *Clients) run(s *slot) {
	defer c.wg.Done()
	defer c.live.Add(-1)
	var last []byte
	reopened, reopenedAt := false, int64(0)
	for {
		s.mu.Lock()
		st := s.st
		s.mu.Unlock()
		err := c.read(st, &last, reopened, reopenedAt)
		if c.closing.Load() {
			return
		}
		if streamclient.IsSlowConsumer(err) {
			c.slow.Add(1)
		} else {
			c.ended.Add(1)
		}
		c.lastErr.Store(&err)
		if c.Reconnect == nil {
			return
		}
		_ = st.Close()
		if !c.reopen(s, string(last)) {
			return
		}
		reopened, reopenedAt = true, c.Sent.Now()
	}
}

// reopen opens s again on a relay other than the one it was on, after the
// last id it saw, retrying until it succeeds or the clients are closed.
func (c *Clients) reopen(s *slot, lastID string) bool {
	if lastID == "" {
		// Nothing seen yet, so nothing to resume after: what was committed
		// while the stream was down is lost to it (and counted missing).
		c.withoutID.Add(1)
	}
	delay := randDuration(c.Reconnect.Window)
	for failures := 1; ; failures++ {
		if err := ctxtime.Sleep(c.ctx, delay); err != nil {
			c.gaveUp.Add(1)
			return false
		}
		relay := c.otherRelay(s.relay)
		base := c.Reconnect.Relays[relay]
		octx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		st, err := c.Transport.Open(octx, s.target.Dial, base, s.target.Token, []string{"templates"}, lastID)
		cancel()
		if err == nil {
			s.mu.Lock()
			s.st, s.relay = st, relay
			s.mu.Unlock()
			if c.closing.Load() {
				// Close may have run between the open and the swap.
				_ = st.Close()
				return false
			}
			c.reopened.Add(1)
			storeMax(&c.lastReopen, c.Sent.Now())
			return true
		}
		if c.ctx.Err() != nil {
			c.gaveUp.Add(1)
			return false
		}
		c.reopenErrs.Add(1)
		werr := fmt.Errorf("reopen stream: %w", err)
		c.lastErr.Store(&werr)
		// The next attempt again avoids the relay the stream was on (it
		// went away), not the one that just refused: that may be busy.
		delay = c.Reconnect.retryDelay(err, failures, time.Now())
	}
}

// maxRetryAfter bounds the Retry-After a stream honours, so that one odd
// answer cannot park it for the rest of a run.
const maxRetryAfter = time.Minute

// retryDelay is how long a stream waits after its failures-th failed
// attempt in a row: a delay that doubles with each failure, from Retry (a
// quarter of it to one and a quarter, at random) up to eight times that,
// and never less than what the relay asked for in a Retry-After (503, 429),
// with jitter on top, so that the streams of one storm do not come back
// together.
func (r *Reconnect) retryDelay(err error, failures int, now time.Time) time.Duration {
	backoff := r.Retry << min(failures-1, 3)
	delay := backoff/4 + randDuration(backoff)
	if wait, ok := streamclient.RetryAfter(err, now); ok {
		wait = min(wait, maxRetryAfter)
		delay = max(delay, wait+randDuration(wait/4+time.Millisecond))
	}
	return delay
}

// otherRelay picks a relay at random among those other than failed.
func (c *Clients) otherRelay(failed int) int {
	n := len(c.Reconnect.Relays)
	if n == 1 {
		return 0
	}
	r := rand.IntN(n - 1)
	if r >= failed {
		r++
	}
	return r
}

func randDuration(window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	return rand.N(window)
}

// read accounts for every event of st until it ends, and returns why it
// ended. last is the last id seen on this subscriber's streams so far.
func (c *Clients) read(st streamclient.Stream, last *[]byte, reopened bool, reopenedAt int64) error {
	for {
		ev, err := st.Next()
		if err != nil {
			return err
		}
		now := c.Sent.Now()
		if bytes.Compare(ev.ID, *last) <= 0 {
			c.misordered.Add(1)
		}
		*last = append((*last)[:0], ev.ID...)
		seq := parseSeq(ev.Data)
		if seq < 0 || seq >= len(c.perSeq) {
			c.foreign.Add(1)
			continue
		}
		c.perSeq[seq].Add(1)
		c.delivered.Add(1)
		acked := c.Sent.Acked(seq)
		if acked == 0 && c.DeferUnacked && c.deferDelivery(seq, pendingDelivery{at: now, reopened: reopened, reopenedAt: reopenedAt}) {
			continue
		}
		c.account(seq, now, acked, reopened, reopenedAt)
	}
}

// account records one delivery of template seq at now whose commit was
// acknowledged at acked (0: not before the delivery).
func (c *Clients) account(seq int, now, acked int64, reopened bool, reopenedAt int64) {
	if reopened && acked != 0 && acked < reopenedAt {
		storeMax(&c.lastReplay, now)
	}
	if seq < c.MeasureFrom || seq >= c.MeasureTo {
		return
	}
	c.FromSend.Record(time.Duration(now - c.Sent.sent[seq].Load()))
	if acked == 0 {
		// Seen before the producer got its commit acknowledgement (the
		// row was already visible): latency under one round trip.
		c.early.Add(1)
		acked = now
	}
	d := time.Duration(now - acked)
	c.Latency.Record(d)
	if reopened {
		c.Resumed.Record(d)
	} else {
		c.Undisturbed.Record(now, d)
	}
}

// deferDelivery keeps a delivery until its acknowledgement arrives; false
// if it arrived meanwhile (the caller accounts for it then).
func (c *Clients) deferDelivery(seq int, p pendingDelivery) bool {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	if c.Sent.Acked(seq) != 0 {
		return false
	}
	c.pending[seq] = append(c.pending[seq], p)
	return true
}

// Ack records that template seq was sent at sent and its commit
// acknowledged at acked (run clock), and accounts for deliveries that
// arrived before the acknowledgement did.
func (c *Clients) Ack(seq int, sent, acked int64) {
	if seq < 0 || seq >= len(c.Sent.acked) {
		return
	}
	c.pendMu.Lock()
	c.Sent.sent[seq].Store(sent)
	c.Sent.acked[seq].Store(acked)
	waiting := c.pending[seq]
	delete(c.pending, seq)
	c.pendMu.Unlock()
	for _, p := range waiting {
		if p.at < acked {
			c.account(seq, p.at, 0, p.reopened, p.reopenedAt)
		} else {
			c.account(seq, p.at, acked, p.reopened, p.reopenedAt)
		}
	}
}

// flushPending accounts for deliveries whose acknowledgement never came
// (an insert that reported an error but committed) as seen before it.
func (c *Clients) flushPending() {
	c.pendMu.Lock()
	left := c.pending
	c.pending = map[int][]pendingDelivery{}
	c.pendMu.Unlock()
	for seq, ps := range left {
		for _, p := range ps {
			c.account(seq, p.at, 0, p.reopened, p.reopenedAt)
		}
	}
}

// Close closes every stream, stops reconnects and waits for the readers.
func (c *Clients) Close() {
	c.closing.Store(true)
	c.stop()
	c.mu.Lock()
	slots := c.slots
	c.slots = nil
	c.mu.Unlock()
	for _, s := range slots {
		s.mu.Lock()
		_ = s.st.Close()
		s.mu.Unlock()
	}
	c.wg.Wait()
	c.flushPending()
}

// LastError returns the last error that ended or failed to reopen a
// stream, or nil.
func (c *Clients) LastError() error {
	if p := c.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Delivered returns the deliveries of this run's templates so far.
func (c *Clients) Delivered() int64 { return c.delivered.Load() }

// Open returns the number of streams still open (or being reopened).
func (c *Clients) Open() int { return int(c.live.Load()) }

// Tally counts, over the committed ones of templates [0, n), deliveries
// missing against audience recipients each and deliveries beyond that, and
// (with SetLocations) the deliveries missing on streams that did open:
// template seq's audience is the opened streams of location seq mod the
// locations.
func (c *Clients) Tally(n, audience int) (missing, extra, missingOpen int64) {
	for seq := range n {
		if c.Sent.Acked(seq) == 0 {
			continue
		}
		got := int64(c.perSeq[seq].Load())
		if got < int64(audience) {
			missing += int64(audience) - got
		} else {
			extra += got - int64(audience)
		}
		if len(c.openedAt) > 0 {
			if want := int64(c.openedAt[seq%len(c.openedAt)].Load()); got < want {
				missingOpen += want - got
			}
		}
	}
	return missing, extra, missingOpen
}

func storeMax(v *atomic.Int64, x int64) {
	for {
		m := v.Load()
		if x <= m || v.CompareAndSwap(m, x) {
			return
		}
	}
}

// ClientResult is what one process's clients counted, in a form that
// travels from a worker process to the parent and merges there.
type ClientResult struct {
	Opened      int          `json:"opened"`
	PerSeq      []int32      `json:"per_seq"`
	OpenedAt    []int32      `json:"opened_per_location"`
	Delivered   int64        `json:"delivered"`
	Foreign     int64        `json:"foreign"`
	Misordered  int64        `json:"misordered"`
	Early       int64        `json:"early"`
	Slow        int64        `json:"slow"`
	Ended       int64        `json:"ended"`
	Reopened    int64        `json:"reopened"`
	ReopenErrs  int64        `json:"reopen_errors"`
	WithoutID   int64        `json:"reopened_without_id"`
	GaveUp      int64        `json:"gave_up"`
	LastReopen  int64        `json:"last_reopen_ns"`
	LastReplay  int64        `json:"last_replay_ns"`
	LastError   string       `json:"last_error,omitempty"`
	Latency     *Histogram   `json:"latency"`
	FromSend    *Histogram   `json:"from_send"`
	ConnectTime *Histogram   `json:"connect_time"`
	Resumed     *Histogram   `json:"resumed"`
	Undisturbed *Timeline    `json:"undisturbed"`
	OpenErrors  []string     `json:"open_errors,omitempty"`
	Process     *ProcessInfo `json:"process,omitempty"`
}

// ProcessInfo is a load-generator process's own cost.
type ProcessInfo struct {
	PID        int     `json:"pid"`
	Streams    int     `json:"streams"`
	RSS        int64   `json:"rss_bytes"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// Result returns the counts of c (after Close).
func (c *Clients) Result() ClientResult {
	r := ClientResult{
		PerSeq: make([]int32, len(c.perSeq)), Delivered: c.delivered.Load(), Foreign: c.foreign.Load(),
		Misordered: c.misordered.Load(), Early: c.early.Load(), Slow: c.slow.Load(), Ended: c.ended.Load(),
		Reopened: c.reopened.Load(), ReopenErrs: c.reopenErrs.Load(), WithoutID: c.withoutID.Load(), GaveUp: c.gaveUp.Load(),
		LastReopen: c.lastReopen.Load(), LastReplay: c.lastReplay.Load(),
		Latency: c.Latency, FromSend: c.FromSend, ConnectTime: c.ConnectTime, Resumed: c.Resumed, Undisturbed: c.Undisturbed,
	}
	for i := range c.perSeq {
		r.PerSeq[i] = c.perSeq[i].Load()
	}
	r.OpenedAt = make([]int32, len(c.openedAt))
	for i := range c.openedAt {
		r.OpenedAt[i] = c.openedAt[i].Load()
	}
	if err := c.LastError(); err != nil {
		r.LastError = err.Error()
	}
	return r
}

// Merge adds another process's counts to c's, so that tallies and
// distributions cover every process's streams.
func (c *Clients) Merge(r ClientResult) error {
	if len(r.PerSeq) != len(c.perSeq) {
		return fmt.Errorf("merge worker results: %d templates tallied, want %d", len(r.PerSeq), len(c.perSeq))
	}
	for i, n := range r.PerSeq {
		c.perSeq[i].Add(n)
	}
	if len(r.OpenedAt) != len(c.openedAt) {
		return fmt.Errorf("merge worker results: streams of %d locations, want %d", len(r.OpenedAt), len(c.openedAt))
	}
	for i, n := range r.OpenedAt {
		c.openedAt[i].Add(n)
	}
	c.delivered.Add(r.Delivered)
	c.foreign.Add(r.Foreign)
	c.misordered.Add(r.Misordered)
	c.early.Add(r.Early)
	c.slow.Add(r.Slow)
	c.ended.Add(r.Ended)
	c.reopened.Add(r.Reopened)
	c.reopenErrs.Add(r.ReopenErrs)
	c.withoutID.Add(r.WithoutID)
	c.gaveUp.Add(r.GaveUp)
	storeMax(&c.lastReopen, r.LastReopen)
	storeMax(&c.lastReplay, r.LastReplay)
	if r.LastError != "" {
		err := errors.New(r.LastError)
		c.lastErr.Store(&err)
	}
	for _, h := range []struct{ into, from *Histogram }{
		{c.Latency, r.Latency}, {c.FromSend, r.FromSend}, {c.ConnectTime, r.ConnectTime}, {c.Resumed, r.Resumed},
	} {
		if h.from != nil {
			h.into.Merge(h.from)
		}
	}
	if r.Undisturbed != nil {
		c.Undisturbed.Merge(r.Undisturbed)
	}
	return nil
}
