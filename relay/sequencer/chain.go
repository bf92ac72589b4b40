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
// does not meet it polls and announces as it would without it, which
// repeats an announcement but never skips one.
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

// advance returns the position after the announced run that begins at
// cursor, or cursor if none does.
func (c *Chain) advance(cursor eventlog.ID) eventlog.ID {
	if c == nil {
		return cursor
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.set || c.prev != cursor {
		return cursor
	}
	c.set = false
	return c.upto
}
