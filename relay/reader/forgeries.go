package reader

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// forgeryLogEvery spaces out the warnings about forged notifications: each
// is counted, but a flood must not flood the log too.
const forgeryLogEvery = time.Minute

// forgeries counts notifications on the events channel that were not sealed
// by a relay: some session other than a relay's is sending on it.
type forgeries struct {
	count  atomic.Uint64
	logged atomic.Int64 // unix nanoseconds of the last warning
}

// note counts one forgery from the session with process id from, and warns
// at most once per forgeryLogEvery.
func (f *forgeries) note(log *slog.Logger, from uint32) {
	n := f.count.Add(1)
	now := time.Now().UnixNano()
	last := f.logged.Load()
	if now-last < int64(forgeryLogEvery) || !f.logged.CompareAndSwap(last, now) {
		return
	}
	log.Warn("ignored a notification on the events channel that no relay sealed: another database session is sending on it",
		"sender_pid", from, "forged_total", n)
}
