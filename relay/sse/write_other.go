//go:build !unix

package sse

import "syscall"

// writeNow reports that nothing could be written without waiting, so every
// write takes the blocking path (a goroutine until it completes).
func writeNow(raw syscall.RawConn, b []byte) (int, error) { return 0, nil }
