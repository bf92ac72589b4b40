package sequencer

import "time"

// Pace is the rule for how long the sequencer waits between polls while
// events flow. Most of a poll's cost is per poll, not per event: the round
// trips, the announcement's transaction, the listeners' wake-ups. While
// events arrive slowly, each poll finds one or none and the wait stays
// Short, because there latency is all a poll buys. While they arrive fast,
// a longer wait announces more events per poll for the same cost, and the
// few milliseconds it adds are small beside what the producers gain from
// the relay taking less of the cores.
//
// The signal is the rate at which the last poll's events arrived: the
// events it found over the time since the poll before it began. Counting
// events per poll alone would not do: a stretched poll finds more because
// it waited longer, so a stretch, once begun, would hold itself at rates
// far below the one that began it, and a poll that came late because the
// machine was busy would look like a burst. The age of the oldest event
// found is no signal either: an event's insertion time is its producer's
// transaction start, so a long transaction would read as latency the wait
// caused, and the sequencer cannot know when the first unannounced event
// committed without the poll that finds it.
type Pace struct {
	// Short is the wait while events arrive slower than StretchRate.
	Short time.Duration
	// Long is the longest wait: the bound on what stretching adds to an
	// event's delay (Long - Short). At or below Short the wait never
	// stretches.
	Long time.Duration
	// StretchRate, in events per second, is the arrival rate at or above
	// which a poll counts as busy.
	StretchRate float64
}

// Next returns the wait after a poll that found found events, elapsed
// after the poll before it began, when the wait before that poll was last.
//
// A busy poll doubles the wait, up to Long, so a short burst is not made
// to wait Long at once; any other poll returns the wait to Short at once,
// so the first poll after a burst ends brings the latency back.
func (p Pace) Next(last time.Duration, found int, elapsed time.Duration) time.Duration {
	if p.Long <= p.Short || !p.busy(found, elapsed) {
		return p.Short
	}
	return min(2*max(last, p.Short), p.Long)
}

// busy reports whether found events in elapsed arrived at StretchRate or
// faster. A window shorter than Short (a poll a wake-up notification
// brought forward: any session may send one) counts as Short, so that a
// handful of events in a tiny window does not pass for a flood.
func (p Pace) busy(found int, elapsed time.Duration) bool {
	if found <= 0 || p.StretchRate <= 0 {
		return false
	}
	// In nanoseconds, where both sides are whole numbers well below 2^53,
	// so the comparison is exact: at exactly StretchRate a poll is busy.
	return float64(found)*float64(time.Second) >= p.StretchRate*float64(max(elapsed, p.Short))
}
