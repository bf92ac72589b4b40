package relaybench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverValuesInOrderWithinOnePercent(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 123_456, 1 << 40, 1<<62 + 12345, 1<<63 - 1} {
		b := bucketOf(v)
		if b < prev {
			t.Errorf("bucketOf(%d) = %d, below the bucket of a smaller value (%d)", v, b, prev)
		}
		prev = b
		if b >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of %d buckets", v, b, numBuckets)
		}
		high := bucketHigh(b)
		if high < v {
			t.Errorf("bucketHigh(bucketOf(%d)) = %d, below the value", v, high)
		}
		if b > 0 && bucketHigh(b-1) >= v {
			t.Errorf("value %d also fits the previous bucket (high %d)", v, bucketHigh(b-1))
		}
		if float64(high-v) > 0.01*float64(v)+1 {
			t.Errorf("bucket of %d reaches %d: more than 1%% off", v, high)
		}
	}
}

func TestQuantilesMatchSortedSamples(t *testing.T) {
	var h Histogram
	rng := rand.New(rand.NewPCG(3, 4))
	samples := make([]time.Duration, 100_000)
	for i := range samples {
		samples[i] = time.Duration(rng.ExpFloat64() * float64(2*time.Millisecond))
		h.Record(samples[i])
	}
	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		want := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if got < want || float64(got-want) > 0.01*float64(want) {
			t.Errorf("Quantile(%v) = %v, want %v within +1%%", q, got, want)
		}
	}
	if h.Count() != uint64(len(samples)) {
		t.Errorf("Count = %d, want %d", h.Count(), len(samples))
	}
	if h.Max() != samples[len(samples)-1] {
		t.Errorf("Max = %v, want %v", h.Max(), samples[len(samples)-1])
	}
	cdf := h.CDF()
	if last := cdf[len(cdf)-1]; last.Fraction != 1 || last.Upto != h.Max() {
		t.Errorf("CDF ends at %+v, want fraction 1 at the max %v", last, h.Max())
	}
}

func TestEmptyHistogramReportsZero(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Mean() != 0 || h.CDF() != nil {
		t.Errorf("empty histogram: p99 %v, mean %v, cdf %v; want zeros", h.Quantile(0.99), h.Mean(), h.CDF())
	}
}
