//go:build !linux

package sse

import "net"

// hangups tells which connections their clients closed. Outside Linux it
// keeps a goroutine per connection blocked in Read: correct, but it costs a
// stack per idle stream.
type hangups struct{}

func newHangups() (*hangups, error) { return &hangups{}, nil }

func (h *hangups) watch(nc net.Conn, fn func()) (func(), error) {
	go func() {
		var b [1]byte
		for {
			if _, err := nc.Read(b[:]); err != nil {
				fn()
				return
			}
		}
	}()
	return func() {}, nil
}

func (h *hangups) run()   {}
func (h *hangups) close() {}
