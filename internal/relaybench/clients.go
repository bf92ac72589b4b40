package relaybench

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Clients are the run's subscribers: they open streams, read them until
// closed, and account for every delivery.
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

	perSeq     []atomic.Int32 // deliveries of each template
	delivered  atomic.Int64
	foreign    atomic.Int64 // events that are not this run's templates
	misordered atomic.Int64 // ids not increasing within a stream (duplicates too)
	early      atomic.Int64 // delivered before the producer saw the commit ack
	slow       atomic.Int64
	ended      atomic.Int64 // streams that ended for another reason
	lastErr    atomic.Value
	// closing is set once Close has begun: read errors after it are ours,
	// not the relay's.
	closing atomic.Bool

	mu      sync.Mutex
	streams []streamclient.Stream
	wg      sync.WaitGroup
}

// NewClients prepares accounting for up to templates templates.
func NewClients(t Transport, sent *Sent, templates int) *Clients {
	return &Clients{Transport: t, Sent: sent, Latency: &Histogram{}, FromSend: &Histogram{}, ConnectTime: &Histogram{}, perSeq: make([]atomic.Int32, templates)}
}

// Target is one stream to open: which relay, from which source address, as
// whom.
type Target struct {
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
			st, err := c.Transport.Open(octx, tg.Dial, tg.Base, tg.Token, []string{"templates"})
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
			c.mu.Lock()
			c.streams = append(c.streams, st)
			c.mu.Unlock()
			c.wg.Add(1)
			go c.read(st)
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%d of %d streams failed to open", n, len(targets)))
	}
	return int(opened.Load()), errs
}

// read accounts for every event of st until it ends.
func (c *Clients) read(st streamclient.Stream) {
	defer c.wg.Done()
	var last []byte
	for {
		ev, err := st.Next()
		if err != nil {
			if streamclient.IsSlowConsumer(err) {
				c.slow.Add(1)
				c.lastErr.Store(err)
			} else if !c.closing.Load() {
				c.ended.Add(1)
				c.lastErr.Store(err)
			}
			return
		}
		now := c.Sent.Now()
		if bytes.Compare(ev.ID, last) <= 0 {
			c.misordered.Add(1)
		}
		last = append(last[:0], ev.ID...)
		seq := parseSeq(ev.Data)
		if seq < 0 || seq >= len(c.perSeq) {
			c.foreign.Add(1)
			continue
		}
		c.perSeq[seq].Add(1)
		c.delivered.Add(1)
		if seq < c.MeasureFrom || seq >= c.MeasureTo {
			continue
		}
		c.FromSend.Record(time.Duration(now - c.Sent.sent[seq].Load()))
		acked := c.Sent.Acked(seq)
		if acked == 0 {
			// Seen before the producer got its commit acknowledgement (the
			// row was already visible): latency under one round trip.
			c.early.Add(1)
			acked = now
		}
		c.Latency.Record(time.Duration(now - acked))
	}
}

// Close closes every stream and waits for the readers.
func (c *Clients) Close() {
	c.mu.Lock()
	streams := c.streams
	c.streams = nil
	c.mu.Unlock()
	c.closing.Store(true)
	for _, st := range streams {
		_ = st.Close()
	}
	c.wg.Wait()
}

// Delivered returns the deliveries of this run's templates so far.
func (c *Clients) Delivered() int64 { return c.delivered.Load() }

// Open returns the number of streams still open.
func (c *Clients) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams) - int(c.slow.Load()+c.ended.Load())
}

// Tally counts, over the committed ones of templates [0, n), deliveries
// missing against audience recipients each and deliveries beyond that.
func (c *Clients) Tally(n, audience int) (missing, extra int64) {
	for seq := range n {
		if c.Sent.Acked(seq) == 0 {
			continue
		}
		n := int64(c.perSeq[seq].Load())
		if n < int64(audience) {
			missing += int64(audience) - n
		} else {
			extra += n - int64(audience)
		}
	}
	return missing, extra
}
