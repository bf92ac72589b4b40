//go:build unix

package sse

import (
	"errors"
	"net"
	"syscall"
)

// writeNow writes as much of b as the socket takes without waiting and
// returns how much that was. A pump worker must never block on one client.
func writeNow(nc net.Conn, b []byte) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	n := 0
	var werr error
	err = raw.Write(func(fd uintptr) bool {
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
