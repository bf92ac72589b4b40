package sequencer

import (
	"testing"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

func TestTheCursorMovesPastAnnouncedRangesThatFollowItAndOnlyThose(t *testing.T) {
	id := func(n int64) eventlog.ID { return eventlog.ID{Xid: n, Seq: n} }
	var c Chain
	c.Add(id(1), id(2))
	c.Add(id(2), id(3)) // contiguous: one run (1, 3]
	if got := c.advance(id(0)); got != id(0) {
		t.Fatalf("a cursor before the run moved to %s, want it to stay (the events before the run are not announced)", got)
	}
	if got := c.advance(id(1)); got != id(3) {
		t.Fatalf("a cursor at the run's start moved to %s, want %s", got, id(3))
	}
	if got := c.advance(id(3)); got != id(3) {
		t.Fatalf("the run was used twice: cursor moved to %s", got)
	}
	c.Add(id(4), id(5))
	c.Add(id(7), id(8)) // not contiguous: replaces (4, 5]
	if got := c.advance(id(4)); got != id(4) {
		t.Fatalf("a replaced run moved the cursor to %s", got)
	}
	if got := c.advance(id(7)); got != id(8) {
		t.Fatalf("cursor at the newest run's start moved to %s, want %s", got, id(8))
	}
	var none *Chain
	if got := none.advance(id(9)); got != id(9) {
		t.Fatalf("no chain moved the cursor to %s", got)
	}
}

func TestACursorThatPolledIntoAnAnnouncedRunStillMovesPastWhatFollows(t *testing.T) {
	id := func(n int64) eventlog.ID { return eventlog.ID{Xid: n, Seq: n} }
	var c Chain
	c.Add(id(1), id(2))
	// The sequencer polled between the commit and Add, found (1, 2] and
	// announced it itself: its cursor is at 2 when (2, 3] is added.
	c.Add(id(2), id(3))
	if got := c.advance(id(2)); got != id(3) {
		t.Fatalf("a cursor inside the run moved to %s, want %s: every later range would be announced twice", got, id(3))
	}
	// A run the cursor passed by polling is dropped, not extended.
	c.Add(id(3), id(4))
	if got := c.advance(id(5)); got != id(5) {
		t.Fatalf("a cursor past the run moved to %s", got)
	}
	c.Add(id(5), id(6))
	if got := c.advance(id(5)); got != id(6) {
		t.Fatalf("after a passed run, a range at the cursor moved it to %s, want %s", got, id(6))
	}
}
