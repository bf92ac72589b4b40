package netpump

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// Poller reports connections that need attention, for every connection of
// a pump at once: one epoll set, each connection registered for what its
// owner wants to hear of, and one goroutine (Run) waiting on it. The
// connections stay in Go's own poller for writing; an fd may belong to
// several epoll sets.
type Poller struct {
	epfd int
	wake [2]int // a pipe: a byte written to wake[1] stops Run

	mu    sync.Mutex
	fns   map[uint64]func()
	token uint64
	done  chan struct{}
}

// Events says what a watched connection is reported for.
type Events uint8

const (
	// HangUp reports a client that closed its connection (or a connection
	// that failed), once.
	HangUp Events = iota
	// Readable reports a connection with data to read, and hang-ups. A
	// report comes when data arrives: whoever is told must read until the
	// socket has nothing left (ReadNow returns 0 and no error), or no
	// further report may come for what is already there.
	Readable
)

// epollET asks for one report per change (edge-triggered); syscall's
// EPOLLET constant is negative and does not convert to the field's type.
const epollET = 1 << 31

// NewPoller creates an epoll set. Call Run to start reporting, and Close.
func NewPoller() (*Poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create epoll set for connections: %w", err)
	}
	p := &Poller{epfd: epfd, fns: map[uint64]func(){}, done: make(chan struct{})}
	if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("create wake pipe for the epoll set: %w", err)
	}
	// Token 0 is the wake pipe.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.closeFDs()
		return nil, fmt.Errorf("watch wake pipe: %w", err)
	}
	return p, nil
}

// Watch calls fn, from Run's goroutine, whenever nc has one of events to
// report. fn must not block: it marks the connection for a worker. The
// returned function stops watching; call it before closing nc.
func (p *Poller) Watch(nc net.Conn, events Events, fn func()) (func(), error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("connection does not expose its file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("connection file descriptor: %w", err)
	}
	p.mu.Lock()
	p.token++
	token := p.token
	p.fns[token] = fn
	p.mu.Unlock()
	forget := func() {
		p.mu.Lock()
		delete(p.fns, token)
		p.mu.Unlock()
	}
	mask := uint32(syscall.EPOLLRDHUP | epollET)
	if events == Readable {
		mask |= syscall.EPOLLIN
	}
	var ctlErr error
	err = raw.Control(func(fd uintptr) {
		// The token, not the fd, identifies the connection: an fd number
		// is reused as soon as a connection closes.
		ev := syscall.EpollEvent{Events: mask, Fd: int32(uint32(token)), Pad: int32(uint32(token >> 32))}
		ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		forget()
		return nil, fmt.Errorf("watch connection: %w", err)
	}
	return func() {
		_ = raw.Control(func(fd uintptr) {
			_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		})
		forget()
	}, nil
}

// Run reports until Close.
func (p *Poller) Run() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if token == 0 {
				return
			}
			p.mu.Lock()
			fn := p.fns[token]
			p.mu.Unlock()
			if fn != nil {
				fn()
			}
		}
	}
}

// Close stops Run, which must have been started, and releases the epoll
// set.
func (p *Poller) Close() {
	_, _ = syscall.Write(p.wake[1], []byte{0})
	<-p.done
	p.closeFDs()
}

func (p *Poller) closeFDs() {
	_ = syscall.Close(p.epfd)
	_ = syscall.Close(p.wake[0])
	_ = syscall.Close(p.wake[1])
}
