//go:build unix

package sse

import (
	"errors"
	"syscall"
)

// writeNow writes as much of b as the socket takes without waiting and
// returns how much that was. A pump worker must never block on one client.
// Without a descriptor (raw is nil) nothing can be written that way.
func writeNow(raw syscall.RawConn, b []byte) (int, error) {
	if raw == nil {
		return 0, nil
	}
	n := 0
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN):
				return true
			case err != nil:
				werr = err
				return true
			}
			n += m
		}
		return true
	})
	if err != nil {
		return n, err
	}
	return n, werr
}
