package sequencer

import (
	"sync"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// Chain carries to the sequencer the ranges of the log that another session
// of this process announced itself (capture mode wal's log transaction
// announces its own events), so that the sequencer moves past them rather
// than announcing them again. It keeps the newest contiguous run only: a
// range that does not follow it replaces it, and a sequencer whose cursor
// is before it polls and announces as it would without it, which repeats
// an announcement but never skips one.
type Chain struct {
	mu         sync.Mutex
	prev, upto eventlog.ID
	set        bool
}

// Add records that the events in (prev, upto] were announced.
func (c *Chain) Add(prev, upto eventlog.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.set && c.upto == prev {
		c.upto = upto
		return
	}
	c.prev, c.upto, c.set = prev, upto, true
}

// advance returns the end of the announced run if cursor is at its start or
// inside it (every event after cursor up to its end was announced), and
// cursor otherwise. A run the cursor has reached or passed by polling is
// dropped, so a later range that follows it starts a run of its own
// rather than extending one the cursor can no longer meet.
func (c *Chain) advance(cursor eventlog.ID) eventlog.ID {
	if c == nil {
		return cursor
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.set || cursor.Less(c.prev):
		return cursor
	case cursor.Less(c.upto):
		c.set = false
		return c.upto
	default:
		c.set = false
		return cursor
	}
}
