package walcapture

import (
	"sync/atomic"
	"time"
)

// Status is an Observer that keeps what /metrics and /readyz show of this
// relay's capture; safe for concurrent reads.
type Status struct {
	appended atomic.Uint64
	batches  atomic.Uint64
	lagNanos atomic.Int64
	lost     atomic.Bool
}

// Appended implements Observer.
func (s *Status) Appended(rows int, commitTime time.Time) {
	s.appended.Add(uint64(rows))
	s.batches.Add(1)
	s.lagNanos.Store(int64(max(time.Since(commitTime), 0)))
}

// CaughtUp implements Observer.
func (s *Status) CaughtUp() { s.lagNanos.Store(0) }

// SlotLost implements Observer.
func (s *Status) SlotLost(lost bool) { s.lost.Store(lost) }

// Events counts the events this relay appended from the WAL.
func (s *Status) Events() uint64 { return s.appended.Load() }

// Batches counts the log transactions that appended them.
func (s *Status) Batches() uint64 { return s.batches.Load() }

// Lag is how long the newest appended transaction had been committed when
// its events reached the log (0 once nothing decoded is waiting).
func (s *Status) Lag() time.Duration { return time.Duration(s.lagNanos.Load()) }

// Lost reports whether the slot was last found invalidated.
func (s *Status) Lost() bool { return s.lost.Load() }
