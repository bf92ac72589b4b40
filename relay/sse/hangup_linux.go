package sse

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// hangups tells which connections their clients closed, for every stream in
// the pump at once: one epoll set with each connection registered for
// "peer hung up", and one goroutine waiting on it. The alternative, a
// goroutine per connection blocked in Read, would cost a stack per idle
// stream. The connections stay in Go's own poller for writing; an fd may
// belong to several epoll sets.
type hangups struct {
	epfd int
	wake [2]int // a pipe: a byte written to wake[1] stops run

	mu    sync.Mutex
	fns   map[uint64]func()
	token uint64
	done  chan struct{}
}

// epollET asks for one report per hang-up (edge-triggered); syscall's
// EPOLLET constant is negative and does not convert to the field's type.
const epollET = 1 << 31

func newHangups() (*hangups, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create epoll set for stream hang-ups: %w", err)
	}
	h := &hangups{epfd: epfd, fns: map[uint64]func(){}, done: make(chan struct{})}
	if err := syscall.Pipe2(h.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("create wake pipe for stream hang-ups: %w", err)
	}
	// Token 0 is the wake pipe.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, h.wake[0], &ev); err != nil {
		h.closeFDs()
		return nil, fmt.Errorf("watch wake pipe: %w", err)
	}
	return h, nil
}

// watch calls fn once the client closes nc (or the connection fails). The
// returned function stops watching; call it before closing nc.
func (h *hangups) watch(nc net.Conn, fn func()) (func(), error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("connection does not expose its file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("connection file descriptor: %w", err)
	}
	h.mu.Lock()
	h.token++
	token := h.token
	h.fns[token] = fn
	h.mu.Unlock()
	forget := func() {
		h.mu.Lock()
		delete(h.fns, token)
		h.mu.Unlock()
	}
	var ctlErr error
	err = raw.Control(func(fd uintptr) {
		// The token, not the fd, identifies the connection: an fd number
		// is reused as soon as a connection closes.
		ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | epollET, Fd: int32(uint32(token)), Pad: int32(uint32(token >> 32))}
		ctlErr = syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = ctlErr
	}
	if err != nil {
		forget()
		return nil, fmt.Errorf("watch connection for hang-up: %w", err)
	}
	return func() {
		_ = raw.Control(func(fd uintptr) {
			_ = syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		})
		forget()
	}, nil
}

// run reports hang-ups until close.
func (h *hangups) run() {
	defer close(h.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(h.epfd, events, -1)
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
			h.mu.Lock()
			fn := h.fns[token]
			h.mu.Unlock()
			if fn != nil {
				fn()
			}
		}
	}
}

// close stops run, if it was started, and releases the epoll set.
func (h *hangups) close() {
	_, _ = syscall.Write(h.wake[1], []byte{0})
	<-h.done
	h.closeFDs()
}

func (h *hangups) closeFDs() {
	_ = syscall.Close(h.epfd)
	_ = syscall.Close(h.wake[0])
	_ = syscall.Close(h.wake[1])
}
