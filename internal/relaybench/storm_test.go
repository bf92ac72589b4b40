package relaybench

import (
	"testing"
	"time"
)

func TestTheSecondAStormEndsInCountsAsDuringIt(t *testing.T) {
	const sec = int64(time.Second)
	c := NewClients(nil, nil, 1)
	defer c.stop()
	// Calm before the kill at 10 s, a slow storm until 15.8 s, calm after.
	for s := int64(2); s < 30; s++ {
		d := 10 * time.Millisecond
		if s >= 10 && s <= 15 {
			d = 500 * time.Millisecond
		}
		c.Undisturbed.Record(s*sec+sec/2, d)
	}
	c.reopened.Store(1)
	c.lastReopen.Store(15*sec + 8*sec/10)
	rep := &Report{Relays: []Relay{{URL: "http://relay-0"}, {URL: "http://relay-1"}}}
	st := stormOf(Config{Subscribers: 2, KillRelay: 0, KillSignal: "KILL"}, rep, c,
		&loadRun{measureStart: 2 * sec, killAt: 10 * sec, measureEnd: 30 * sec})
	if st.LiveDuring.P99 < 400 || st.LiveAfter.P99 > 50 || st.LiveBefore.P99 > 50 {
		t.Fatalf("live p99 before %.1f ms, during %.1f, after %.1f: want the storm's six seconds (10 to 15) during it, and none after",
			st.LiveBefore.P99, st.LiveDuring.P99, st.LiveAfter.P99)
	}
	if st.LiveDuring.Count != 6 {
		t.Errorf("during the storm: %d latencies, want the 6 of seconds 10 to 15", st.LiveDuring.Count)
	}
}

func TestIsolatingTheKilledRelaysStreamsSplitsTheSubscribersBetweenTwoSelectionsExactly(t *testing.T) {
	const subscribers, relays, killed = 1000, 4, 1
	only, rest := &relaySelect{Relay: killed, Only: true}, &relaySelect{Relay: killed}
	for i := range subscribers {
		if only.keeps(i, relays) == rest.keeps(i, relays) {
			t.Fatalf("subscriber %d (relay %d): kept by both selections or by neither", i, i%relays)
		}
		if only.keeps(i, relays) != (i%relays == killed) {
			t.Fatalf("subscriber %d (relay %d) in the isolated selection: %v", i, i%relays, only.keeps(i, relays))
		}
	}
	if n, m := only.count(0, subscribers, relays), rest.count(0, subscribers, relays); n != 250 || m != 750 {
		t.Errorf("counts %d and %d, want 250 and 750", n, m)
	}
	var all *relaySelect
	if n := all.count(0, subscribers, relays); n != subscribers {
		t.Errorf("no selection keeps %d, want all %d", n, subscribers)
	}
}
