package match

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"

	"github.com/pgrelay/pgrelay/internal/cputime"
)

// benchIndex registers subscribers entries, grouped so that each audience key
// reaches exactly recipients of them: subscriber i listens to key
// "location:<i/recipients>" and, like a ZOWI user, to its org key shared by
// every group (so an event addressed to a location and an org exercises the
// per-event dedup mark without adding recipients: nobody listens to the
// org key of the events below).
func benchIndex(subscribers, recipients int) (*Index[int], []string) {
	ix := New[int]()
	for i := range subscribers {
		e := &Entry[int]{Subscriber: "user-" + strconv.Itoa(i), Value: i}
		ix.Set(e, Keys{"templates": {"location:" + strconv.Itoa(i/recipients), "org:listened"}})
	}
	groups := subscribers / recipients
	keys := make([]string, groups)
	for g := range keys {
		keys[g] = "location:" + strconv.Itoa(g)
	}
	return ix, keys
}

// BenchmarkMatch measures finding the recipients of one event, by number of
// registered subscribers and recipients per event. The event's location is
// drawn at random so that large indexes are measured with cold caches, as a
// relay sees them. ns/op is per event; ns/recipient is reported too.
func BenchmarkMatch(b *testing.B) {
	for _, subscribers := range []int{1_000, 100_000, 1_000_000} {
		for _, recipients := range []int{1, 10, 1000} {
			if recipients > subscribers {
				continue
			}
			b.Run(fmt.Sprintf("subscribers=%d/recipients=%d", subscribers, recipients), func(b *testing.B) {
				ix, keys := benchIndex(subscribers, recipients)
				rng := rand.New(rand.NewPCG(1, 2))
				order := make([]int, 1<<16)
				for i := range order {
					order[i] = rng.IntN(len(keys))
				}
				audience := make([]string, 2)
				audience[1] = "org:nobody-listens"
				delivered := 0
				fn := func(e *Entry[int]) { delivered++ }
				// Finish collecting the setup's garbage now, so that
				// marking a large heap is not counted against matching.
				runtime.GC()
				b.ReportAllocs()
				b.ResetTimer()
				cpu := cputime.Start()
				for i := 0; b.Loop(); i++ {
					audience[0] = keys[order[i&(len(order)-1)]]
					ix.Match("templates", audience, "", fn)
				}
				b.StopTimer()
				if want := b.N * recipients; delivered != want {
					b.Fatalf("delivered %d, want %d", delivered, want)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(delivered), "ns/recipient")
				// CPU time is what other load on a shared machine does not
				// inflate; compare it with ns/op to see how disturbed a run was.
				b.ReportMetric(cpu.Per(b.N), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkMatchOverlappingKeys measures an event addressed to two keys that
// reach the same recipients (a ZOWI listens to its org and to every location
// of it): every recipient is found twice and delivered once.
func BenchmarkMatchOverlappingKeys(b *testing.B) {
	const subscribers, recipients = 100_000, 10
	ix := New[int]()
	for i := range subscribers {
		g := strconv.Itoa(i / recipients)
		ix.Set(&Entry[int]{Subscriber: "user-" + strconv.Itoa(i)}, Keys{"templates": {"location:" + g, "org:" + g}})
	}
	audience := []string{"location:7", "org:7"}
	delivered := 0
	fn := func(*Entry[int]) { delivered++ }
	b.ReportAllocs()
	for b.Loop() {
		ix.Match("templates", audience, "", fn)
	}
	if want := b.N * recipients; delivered != want {
		b.Fatalf("delivered %d, want %d", delivered, want)
	}
}
