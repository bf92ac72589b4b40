//go:build !unix

package netpump

import (
	"errors"
	"syscall"
)

// WriteNow reports that nothing could be written without waiting, so every
// write takes the blocking path (a goroutine until it completes).
func WriteNow(raw syscall.RawConn, b []byte) (int, error) { return 0, nil }

// ErrEOF is ReadNow's report of a client that closed its side.
var ErrEOF = errors.New("the client closed its side of the connection")

// ReadNow is not available on this system: it reports the connection as
// failed, so that transports relying on it close the connection.
func ReadNow(raw syscall.RawConn, b []byte) (int, error) {
	return 0, errors.New("non-blocking reads are not supported on this system")
}
