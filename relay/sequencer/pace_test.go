package sequencer_test

import (
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/sequencer"
)

const ms = time.Millisecond

// The defaults: 2 ms while events trickle, up to 10 ms from 1,000 events a
// second.
var pace = sequencer.Pace{Short: 2 * ms, Long: 10 * ms, StretchRate: 1000}

func TestThePollIntervalStretchesOnlyWhileEventsArriveFastAndShrinksAtOnce(t *testing.T) {
	t.Parallel()
	cases := []struct {
		rule    string
		last    time.Duration // the wait before the poll
		found   int           // events the poll found
		elapsed time.Duration // since the poll before it began
		want    time.Duration // the wait after it
	}{
		{"an empty poll keeps the short wait", 2 * ms, 0, 3 * ms, 2 * ms},
		{"one event per poll is a trickle", 2 * ms, 1, 3 * ms, 2 * ms},
		{"200 events a second keep the short wait", 2 * ms, 1, 5 * ms, 2 * ms},
		{"just below the stretch rate keeps the short wait", 2 * ms, 2, 2500 * time.Microsecond, 2 * ms},
		{"at the stretch rate the wait doubles", 2 * ms, 3, 3 * ms, 4 * ms},
		{"faster still, it doubles again", 4 * ms, 10, 5 * ms, 8 * ms},
		{"it never exceeds the long wait", 8 * ms, 40, 9 * ms, 10 * ms},
		{"a stretched wait stays long while the rate holds", 10 * ms, 12, 11 * ms, 10 * ms},
		{"a burst too large to count stays long", 10 * ms, 65, 11 * ms, 10 * ms},
		{"a stretched poll that finds events slower than the rate shrinks at once", 10 * ms, 9, 11 * ms, 2 * ms},
		{"a stretched poll that finds nothing shrinks at once", 10 * ms, 0, 11 * ms, 2 * ms},
		{"a poll that came late is judged by the rate, not by what piled up", 2 * ms, 20, 40 * ms, 2 * ms},
		{"a poll brought forward by a wake-up counts a whole short wait", 2 * ms, 1, 100 * time.Microsecond, 2 * ms},
		{"a burst found at once after waking up stretches", 2 * ms, 65, 100 * time.Microsecond, 4 * ms},
	}
	for _, c := range cases {
		if got := pace.Next(c.last, c.found, c.elapsed); got != c.want {
			t.Errorf("%s: Next(last %v, found %d, elapsed %v) = %v, want %v", c.rule, c.last, c.found, c.elapsed, got, c.want)
		}
	}
}

func TestALongWaitAtOrBelowTheShortOneTurnsStretchingOff(t *testing.T) {
	t.Parallel()
	for _, long := range []time.Duration{0, ms, 2 * ms} {
		off := sequencer.Pace{Short: 2 * ms, Long: long, StretchRate: 1000}
		if got := off.Next(2*ms, 65, 2*ms); got != 2*ms {
			t.Errorf("Long %v: a burst gave a wait of %v, want the short 2ms", long, got)
		}
	}
}

// Whatever a poll found, the wait stays between Short and Long, and is
// longer than Short only when the poll's events arrived at StretchRate or
// faster: so stretching adds at most Long - Short to any event's delay, and
// only to events that came in at that rate.
func TestTheWaitIsBoundedAndStretchesOnlyAtTheStretchRate(t *testing.T) {
	t.Parallel()
	for _, last := range []time.Duration{2 * ms, 4 * ms, 8 * ms, 10 * ms} {
		for found := 0; found <= 65; found++ {
			for elapsed := time.Duration(0); elapsed <= 50*ms; elapsed += 250 * time.Microsecond {
				got := pace.Next(last, found, elapsed)
				if got < pace.Short || got > pace.Long {
					t.Fatalf("Next(%v, %d, %v) = %v, outside [%v, %v]", last, found, elapsed, got, pace.Short, pace.Long)
				}
				// found/window >= rate, in whole nanoseconds.
				window := max(elapsed, pace.Short)
				fast := found > 0 && int64(found)*int64(time.Second) >= int64(pace.StretchRate)*int64(window)
				if got > pace.Short && !fast {
					t.Fatalf("Next(%v, %d, %v) = %v: stretched below %v events/s", last, found, elapsed, got, pace.StretchRate)
				}
				if got == pace.Short && fast {
					t.Fatalf("Next(%v, %d, %v) = %v: not stretched at %v events/s or more", last, found, elapsed, got, pace.StretchRate)
				}
			}
		}
	}
}
