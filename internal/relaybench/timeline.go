package relaybench

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"
)

// timelineSeconds bounds a timeline: a run's longest warm-up and measured
// window, and its drain, fit.
const timelineSeconds = int(MaxDuration/time.Second) + 600

// Timeline is a latency histogram per second of a run's clock, so that the
// latency of one stretch of a run (before, during and after a relay is
// killed) can be read afterwards. The zero value is ready to use.
type Timeline struct {
	secs [timelineSeconds]atomic.Pointer[Histogram]
}

// Record adds d, observed at run-clock time at (ns), to its second.
func (t *Timeline) Record(at int64, d time.Duration) {
	t.second(int(max(at, 0) / int64(time.Second))).Record(d)
}

func (t *Timeline) second(s int) *Histogram {
	s = min(s, timelineSeconds-1)
	if h := t.secs[s].Load(); h != nil {
		return h
	}
	t.secs[s].CompareAndSwap(nil, &Histogram{})
	return t.secs[s].Load()
}

// Window returns the latencies observed from from to to (run clock, ns),
// in whole seconds: those of the seconds s with from ≤ s < to, both
// rounded down to a second. Adjacent windows share no second.
func (t *Timeline) Window(from, to int64) *Histogram {
	out := &Histogram{}
	first, end := int(max(from, 0)/int64(time.Second)), int(max(to, 0)/int64(time.Second))
	for s := first; s < min(end, timelineSeconds); s++ {
		if h := t.secs[s].Load(); h != nil {
			out.Merge(h)
		}
	}
	return out
}

// Merge adds o's latencies to t's, second by second.
func (t *Timeline) Merge(o *Timeline) {
	for s := range o.secs {
		if h := o.secs[s].Load(); h != nil {
			t.second(s).Merge(h)
		}
	}
}

type timelineSecond struct {
	Second int        `json:"s"`
	Hist   *Histogram `json:"h"`
}

// MarshalJSON encodes the seconds that saw a latency.
func (t *Timeline) MarshalJSON() ([]byte, error) {
	out := []timelineSecond{}
	for s := range t.secs {
		if h := t.secs[s].Load(); h != nil {
			out = append(out, timelineSecond{s, h})
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON adds the encoded seconds to t.
func (t *Timeline) UnmarshalJSON(b []byte) error {
	var in []timelineSecond
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("decode timeline: %w", err)
	}
	for _, s := range in {
		if s.Second < 0 || s.Second >= timelineSeconds || s.Hist == nil {
			return fmt.Errorf("decode timeline: second %d out of range", s.Second)
		}
		t.second(s.Second).Merge(s.Hist)
	}
	return nil
}
