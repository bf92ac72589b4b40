//go:build !unix

package sse

import "net"

// writeNow reports that nothing could be written without waiting, so every
// write takes the blocking path (a goroutine until it completes).
func writeNow(nc net.Conn, b []byte) (int, error) { return 0, nil }
