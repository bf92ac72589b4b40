package netpump

import (
	"net"
	"sync"
	"syscall"
	"time"
)

// Frames up to gatherLimit are gathered into one write; larger ones are
// written from the message itself, which every recipient shares, so a
// stream's backlog is never copied whole. Buffers that grew past
// maxPooledBuffer are dropped rather than pooled, so one burst does not keep
// its memory in the pool.
const (
	gatherLimit     = 32 << 10
	maxPooledBuffer = 64 << 10
	maxPooledFrames = 1024
)

// Writer writes a connection's frames to its socket as they come, never
// waiting: small frames are gathered in a bounded buffer, large ones are
// written as they are. Once the socket stops taking data the writer is
// blocked, and the frames still to write are only listed (the messages' own
// bytes, not copies) for WriteRest to finish on a goroutine that may wait.
// A Writer serves one turn of one connection; get one from a WriterPool.
type Writer struct {
	raw     syscall.RawConn
	buf     []byte
	blocked bool
	pending [][]byte // once blocked: what is left to write, in order
	err     error    // the socket failed; nothing more is written
}

// Frame writes b, which is kept by reference until written: it must not
// change afterwards (a shared message, a constant).
func (w *Writer) Frame(b []byte) error {
	switch {
	case w.err != nil:
		return w.err
	case w.blocked:
		w.pending = append(w.pending, b)
		return nil
	case len(w.buf)+len(b) <= gatherLimit:
		w.buf = append(w.buf, b...)
		return nil
	}
	if err := w.Flush(); err != nil {
		return err
	}
	switch {
	case w.blocked:
		w.pending = append(w.pending, b)
	case len(b) <= gatherLimit:
		w.buf = append(w.buf, b...)
	default:
		w.send(b)
	}
	return w.err
}

// Write writes b, copying it if it has to be kept: for small frames built
// in a scratch buffer (a frame header, a pong). It implements io.Writer.
func (w *Writer) Write(b []byte) (int, error) {
	switch {
	case w.err != nil:
		return 0, w.err
	case w.blocked:
		w.pending = append(w.pending, append([]byte(nil), b...))
		return len(b), nil
	case len(w.buf)+len(b) > gatherLimit:
		if err := w.Flush(); err != nil {
			return 0, err
		}
		if w.blocked {
			w.pending = append(w.pending, append([]byte(nil), b...))
			return len(b), nil
		}
	}
	w.buf = append(w.buf, b...)
	return len(b), nil
}

// Flush writes the gathered frames, unless the socket is blocked.
func (w *Writer) Flush() error {
	if w.err != nil || w.blocked || len(w.buf) == 0 {
		return w.err
	}
	w.send(w.buf)
	if !w.blocked {
		w.buf = w.buf[:0]
	}
	return w.err
}

// Blocked reports whether the socket stopped taking data: what is left must
// be written by WriteRest.
func (w *Writer) Blocked() bool { return w.blocked }

// Err returns why the socket failed, or nil.
func (w *Writer) Err() error { return w.err }

// WriteRest writes what a blocked writer could not write at once, waiting
// for the client up to timeout, or until ended or stopping is closed (the
// stream was ended, the pump stops): a client cut off lets go of its frames
// at once, not at the timeout. A write cut short fails as a timed-out one
// does (os.ErrDeadlineExceeded); once everything is written, nc has no write
// deadline left, since WriteNow honours deadlines too.
func (w *Writer) WriteRest(nc net.Conn, timeout time.Duration, ended, stopping <-chan struct{}) error {
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-ended:
		case <-stopping:
		case <-stop:
			return
		}
		_ = nc.SetWriteDeadline(time.Now())
	}()
	_ = nc.SetWriteDeadline(time.Now().Add(timeout))
	if isClosed(ended) || isClosed(stopping) {
		// The watcher may have cut the deadline short before the line above.
		_ = nc.SetWriteDeadline(time.Now())
	}
	var err error
	for _, b := range w.pending {
		if _, err = nc.Write(b); err != nil {
			break
		}
	}
	close(stop)
	<-watched
	if err != nil {
		return err
	}
	return nc.SetWriteDeadline(time.Time{})
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// send writes b without waiting; what the socket does not take is pending.
// Once b is pending it must not change: buf is not appended to again.
func (w *Writer) send(b []byte) {
	n, err := WriteNow(w.raw, b)
	switch {
	case err != nil:
		w.err = err
	case n < len(b):
		w.blocked = true
		w.pending = append(w.pending, b[n:])
	}
}

// WriterPool recycles Writers and their gathering buffers between turns, so
// that an idle connection holds none.
type WriterPool struct{ pool sync.Pool }

// Get returns an empty Writer for raw (nil: a socket that never takes data
// at once, so every frame is left for WriteRest).
func (p *WriterPool) Get(raw syscall.RawConn) *Writer {
	w, ok := p.pool.Get().(*Writer)
	if !ok {
		w = &Writer{buf: make([]byte, 0, 4096)}
	}
	w.raw = raw
	return w
}

// Put returns w to the pool, empty. w must not be used afterwards.
func (p *WriterPool) Put(w *Writer) {
	if cap(w.buf) > maxPooledBuffer {
		w.buf = nil
	}
	clear(w.pending)
	w.pending = w.pending[:0]
	if cap(w.pending) > maxPooledFrames {
		w.pending = nil
	}
	*w = Writer{buf: w.buf[:0], pending: w.pending}
	p.pool.Put(w)
}
