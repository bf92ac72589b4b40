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

func TestMergedHistogramsEqualOneHistogramOfEveryDurationEvenThroughJSON(t *testing.T) {
	// Each load-generator process records its own streams; the report is
	// the merge, so it must not differ from one process recording all.
	var all, a, b Histogram
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20_000 {
		d := time.Duration(r.ExpFloat64() * float64(3*time.Millisecond))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	js, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var wire Histogram
	if err := wire.UnmarshalJSON(js); err != nil {
		t.Fatalf("UnmarshalJSON: %v", err)
	}
	var merged Histogram
	merged.Merge(&a)
	merged.Merge(&wire)
	if merged.Count() != all.Count() || merged.Max() != all.Max() || merged.Mean() != all.Mean() {
		t.Errorf("merged count %d max %v mean %v, want %d %v %v", merged.Count(), merged.Max(), merged.Mean(), all.Count(), all.Max(), all.Mean())
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		if got, want := merged.Quantile(q), all.Quantile(q); got != want {
			t.Errorf("merged quantile %v = %v, want %v", q, got, want)
		}
	}
	if !slices.Equal(merged.CDF(), all.CDF()) {
		t.Error("merged CDF differs from the CDF of one histogram of every duration")
	}
	if err := wire.UnmarshalJSON([]byte(`{"max_ns":1,"buckets":[[99999999,1]]}`)); err == nil {
		t.Error("a bucket beyond the histogram's range was accepted")
	}
}

func TestThinnedCDFKeepsTheEndsAndFewPoints(t *testing.T) {
	var h Histogram
	r := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		h.Record(time.Duration(r.ExpFloat64() * float64(time.Second)))
	}
	full, thin := h.CDF(), thinCDF(h.CDF())
	if len(thin) > 450 || len(thin) >= len(full) {
		t.Errorf("thinned CDF has %d points of %d, want at most 450", len(thin), len(full))
	}
	if thin[0] != full[0] || thin[len(thin)-1] != full[len(full)-1] {
		t.Errorf("thinned CDF lost an end: %v…%v, want %v…%v", thin[0], thin[len(thin)-1], full[0], full[len(full)-1])
	}
}

func TestTimelineWindowsSplitARunWithoutSharingASecond(t *testing.T) {
	var tl Timeline
	sec := int64(time.Second)
	for s := range int64(10) {
		tl.Record(s*sec+sec/2, time.Duration(s+1)*time.Millisecond)
	}
	before, during, after := tl.Window(0, 3*sec+sec/3), tl.Window(3*sec+sec/3, 6*sec+sec/2), tl.Window(6*sec+sec/2, 10*sec)
	if before.Count() != 3 || during.Count() != 3 || after.Count() != 4 {
		t.Errorf("windows hold %d, %d, %d latencies, want 3, 3, 4", before.Count(), during.Count(), after.Count())
	}
	if before.Max() != 3*time.Millisecond || during.Max() != 6*time.Millisecond {
		t.Errorf("window maxima %v, %v, want 3ms and 6ms", before.Max(), during.Max())
	}
}
