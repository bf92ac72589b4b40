//go:build unix

package netpump

import (
	"errors"
	"syscall"
)

// WriteNow writes as much of b as the socket takes without waiting and
// returns how much that was: a pump's worker must never block on one
// client. Without a descriptor (raw is nil) nothing can be written that way.
func WriteNow(raw syscall.RawConn, b []byte) (int, error) {
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

// ErrEOF is ReadNow's report of a client that closed its side.
var ErrEOF = errors.New("the client closed its side of the connection")

// ReadNow reads what the socket holds, up to len(b), without waiting. It
// returns 0 and no error when there is nothing to read now, and ErrEOF once
// the client has closed its side.
func ReadNow(raw syscall.RawConn, b []byte) (int, error) {
	if raw == nil || len(b) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		for {
			m, err := syscall.Read(int(fd), b)
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN):
			case err != nil:
				rerr = err
			case m == 0:
				rerr = ErrEOF
			default:
				n = m
			}
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}
