//go:build !linux

package netpump

import (
	"errors"
	"net"
	"syscall"
)

// Poller reports connections that need attention. Outside Linux it keeps a
// goroutine per connection: correct, but it costs a stack per idle stream.
// Each goroutine ends when its connection is closed.
type Poller struct{}

// Events says what a watched connection is reported for.
type Events uint8

const (
	// HangUp reports a client that closed its connection, once.
	HangUp Events = iota
	// Readable reports a connection with data to read, and hang-ups; the
	// one told must read until the socket has nothing left.
	Readable
)

// NewPoller returns a Poller.
func NewPoller() (*Poller, error) { return &Poller{}, nil }

// Watch calls fn whenever nc has one of events to report.
func (p *Poller) Watch(nc net.Conn, events Events, fn func()) (func(), error) {
	if events == HangUp {
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
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("connection does not expose its file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			// Go's poller calls the function again once the socket is
			// readable: that second call is the report. Reading is left to
			// whoever fn wakes.
			waited := false
			err := raw.Read(func(uintptr) bool {
				if waited {
					return true
				}
				waited = true
				return false
			})
			fn()
			if err != nil {
				return // closed
			}
		}
	}()
	return func() {}, nil
}

// Run does nothing: each watch has its own goroutine.
func (p *Poller) Run() {}

// Close does nothing.
func (p *Poller) Close() {}
