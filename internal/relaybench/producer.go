package relaybench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// seqMarker precedes a template's sequence number in its name. The producer
// writes it, clients find it in the delivered row.
const seqMarker = "rbseq:"

// templateName names template seq of a run.
func templateName(prefix string, seq int) string {
	return seqMarker + strconv.Itoa(seq) + " " + prefix
}

// parseSeq finds the sequence number in a delivered row, or -1.
func parseSeq(row []byte) int {
	i := bytes.Index(row, []byte(seqMarker))
	if i < 0 {
		return -1
	}
	n, digits := 0, 0
	for _, c := range row[i+len(seqMarker):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
		digits++
	}
	if digits == 0 {
		return -1
	}
	return n
}

// Sent records, per template, when its insert was sent and when its commit
// was acknowledged, as nanoseconds since the run's clock started (0: not
// yet). Clients measure latency from the acknowledgement: the row is
// committed by then, and the acknowledgement arrives within a loopback
// round trip of the commit, so commit→client is measured at most that much
// short and never includes the producer's WAL flush.
type Sent struct {
	start time.Time
	sent  []atomic.Int64
	acked []atomic.Int64
}

// NewSent returns a record for up to n templates, on a clock that starts now.
func NewSent(n int) *Sent {
	return &Sent{start: time.Now(), sent: make([]atomic.Int64, n), acked: make([]atomic.Int64, n)}
}

// NewSentAt returns a record for up to n templates on the clock of another
// process that started at start (wall clock, ns since the epoch): a worker
// process reads the parent's clock from the shared system clock.
func NewSentAt(n int, startUnixNano int64) *Sent {
	return &Sent{start: time.Unix(0, startUnixNano), sent: make([]atomic.Int64, n), acked: make([]atomic.Int64, n)}
}

// StartUnixNano returns when the clock started, as wall-clock ns.
func (s *Sent) StartUnixNano() int64 { return s.start.UnixNano() }

// Now returns the run's clock (monotonic in the process that started it,
// the wall clock in worker processes).
func (s *Sent) Now() int64 { return int64(time.Since(s.start)) }

// Acked returns when template seq's commit was acknowledged (0: not yet).
func (s *Sent) Acked(seq int) int64 { return s.acked[seq].Load() }

// Producer inserts templates on a fixed schedule (open loop: a slow insert
// does not delay the next one's start, it only occupies one of the workers).
type Producer struct {
	Pool       *pgxpool.Pool
	Population Population
	Rate       float64 // inserts per second
	Workers    int
	Sent       *Sent
	// InsertTime records each insert's round trip (send to commit ack).
	InsertTime *Histogram
	// OnAck, if set, is told of every commit acknowledgement (run clock
	// of the send and of the acknowledgement), as it happens.
	OnAck func(seq int, sent, acked int64)

	committed atomic.Int64
	failed    atomic.Int64
	behind    atomic.Int64
	lastErr   atomic.Pointer[error]
}

const insertSQL = `INSERT INTO public.templates (name, share_location_ids, created_by) VALUES ($1, $2, $3)`

// Run inserts templates 0, 1, … until n have been sent or ctx is done, and
// waits for the inserts in flight.
func (p *Producer) Run(ctx context.Context, n int) {
	jobs := make(chan int, p.Workers)
	done := make(chan struct{})
	for range p.Workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for seq := range jobs {
				p.insert(ctx, seq)
			}
		}()
	}
	interval := time.Duration(float64(time.Second) / p.Rate)
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for seq := 0; seq < n; seq++ {
		due := start.Add(time.Duration(seq) * interval)
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				break schedule
			case <-timer.C:
			}
		}
		select {
		case jobs <- seq:
		default:
			// Every worker is busy: the database is not keeping up with the
			// rate. Count it, then wait for a worker.
			p.behind.Add(1)
			select {
			case jobs <- seq:
			case <-ctx.Done():
				break schedule
			}
		}
	}
	close(jobs)
	for range p.Workers {
		<-done
	}
}

func (p *Producer) insert(ctx context.Context, seq int) {
	loc := p.Population.Location(seq % p.Population.Locations())
	sent := p.Sent.Now()
	p.Sent.sent[seq].Store(sent)
	_, err := p.Pool.Exec(ctx, insertSQL, templateName(p.Population.Prefix, seq), []string{loc}, p.Population.Producer())
	acked := p.Sent.Now()
	if err != nil {
		p.failed.Add(1)
		werr := fmt.Errorf("insert template %d: %w", seq, err)
		p.lastErr.Store(&werr)
		return
	}
	p.Sent.acked[seq].Store(acked)
	if p.OnAck != nil {
		p.OnAck(seq, sent, acked)
	}
	p.committed.Add(1)
	if p.InsertTime != nil {
		p.InsertTime.Record(time.Duration(acked - sent))
	}
}

// Committed returns how many inserts committed.
func (p *Producer) Committed() int64 { return p.committed.Load() }

// Failed returns how many inserts failed, and the last failure.
func (p *Producer) Failed() (int64, error) {
	var err error
	if e := p.lastErr.Load(); e != nil {
		err = *e
	}
	return p.failed.Load(), err
}

// Behind returns how many inserts started late because every worker was
// busy.
func (p *Producer) Behind() int64 { return p.behind.Load() }
