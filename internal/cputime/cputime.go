// Package cputime reads the CPU time this process has used, so benchmarks
// can report cost per operation that other load on a shared machine does
// not inflate (wall time does: a descheduled benchmark still counts time).
package cputime

import (
	"syscall"
	"time"
)

// Process returns the user and system CPU time used by every thread of this
// process so far (0 if the kernel does not say).
func Process() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Meter measures CPU time from when it was started.
type Meter struct{ start time.Duration }

// Start returns a meter running from now.
func Start() Meter { return Meter{start: Process()} }

// Per returns the CPU time used since Start divided by n (0 if n is 0).
func (m Meter) Per(n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(Process()-m.start) / float64(n)
}
