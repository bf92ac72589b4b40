package relaybench

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// subBits sets the histogram's resolution: each power of two is split into
// 2^subBits buckets, so a recorded value is off by at most 1/2^subBits
// (under 1%).
const subBits = 7

// numBuckets covers every int64 number of nanoseconds.
const numBuckets = (64 - subBits + 1) << subBits

// Histogram records durations with bounded relative error and no locks, so
// thousands of client goroutines can record into one without contention on
// a mutex. The zero value is ready to use.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	max    atomic.Int64
}

// bucketOf maps a value to its bucket: values below 2^subBits have a bucket
// each; above, the top subBits+1 significant bits select the bucket.
func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(v)
	}
	u := uint64(v)
	exp := bits.Len64(u) - subBits - 1 // how far u is shifted to keep subBits+1 bits
	return (exp+1)<<subBits + int(u>>uint(exp)) - 1<<subBits
}

// bucketHigh returns the largest value that falls in bucket b.
func bucketHigh(b int) int64 {
	if b < 1<<subBits {
		return int64(b)
	}
	exp := b>>subBits - 1
	mant := uint64(b&(1<<subBits-1)) + 1<<subBits
	high := (mant+1)<<uint(exp) - 1
	if high > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(high)
}

// Record adds one duration (negative durations count as zero).
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Count returns how many durations were recorded.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max returns the largest duration recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Quantile returns the duration at or below which a fraction q of the
// recorded durations lie (the upper end of its bucket, never above Max), or
// 0 when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for b := range h.counts {
		seen += h.counts[b].Load()
		if seen >= rank {
			return min(time.Duration(bucketHigh(b)), h.Max())
		}
	}
	return h.Max()
}

// Mean returns the average of the recorded durations, from bucket upper
// bounds (so within the histogram's resolution).
func (h *Histogram) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	var sum float64
	for b := range h.counts {
		if c := h.counts[b].Load(); c > 0 {
			sum += float64(c) * float64(bucketHigh(b))
		}
	}
	return time.Duration(sum / float64(n))
}

// CDFPoint is one step of a cumulative distribution: a fraction of the
// durations are at or below Upto.
type CDFPoint struct {
	Upto     time.Duration `json:"upto_ns"`
	Fraction float64       `json:"fraction"`
}

// CDF returns the cumulative distribution, one point per non-empty bucket.
func (h *Histogram) CDF() []CDFPoint {
	n := h.n.Load()
	if n == 0 {
		return nil
	}
	var out []CDFPoint
	var seen uint64
	for b := range h.counts {
		c := h.counts[b].Load()
		if c == 0 {
			continue
		}
		seen += c
		out = append(out, CDFPoint{Upto: min(time.Duration(bucketHigh(b)), h.Max()), Fraction: float64(seen) / float64(n)})
	}
	return out
}

// Merge adds every duration recorded in o to h, as if they had been
// recorded in h: how the histograms of several load-generator processes
// become one.
func (h *Histogram) Merge(o *Histogram) {
	var added uint64
	for b := range o.counts {
		if c := o.counts[b].Load(); c > 0 {
			h.counts[b].Add(c)
			added += c
		}
	}
	h.n.Add(added)
	v := o.max.Load()
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// histogramJSON is a histogram on the wire: only the non-empty buckets, as
// [bucket, count] pairs, so that a latency distribution of a few hundred
// distinct buckets is a few kilobytes.
type histogramJSON struct {
	Max     int64       `json:"max_ns"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON encodes the histogram's non-empty buckets and its maximum.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	out := histogramJSON{Max: h.max.Load(), Buckets: [][2]uint64{}}
	for b := range h.counts {
		if c := h.counts[b].Load(); c > 0 {
			out.Buckets = append(out.Buckets, [2]uint64{uint64(b), c})
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON adds the encoded durations to h (normally the zero value).
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var in histogramJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("decode histogram: %w", err)
	}
	var o Histogram
	for _, bc := range in.Buckets {
		if bc[0] >= numBuckets {
			return fmt.Errorf("decode histogram: bucket %d out of range", bc[0])
		}
		o.counts[bc[0]].Add(bc[1])
		o.n.Add(bc[1])
	}
	o.max.Store(in.Max)
	h.Merge(&o)
	return nil
}
