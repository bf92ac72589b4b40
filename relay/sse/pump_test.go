package sse

import (
	"strings"
	"testing"
)

func TestABlockedStreamListsLargeFramesWithoutCopyingThem(t *testing.T) {
	p := &pump{}
	// Without a descriptor nothing can be written at once: the writer is
	// blocked from its first write, as on a socket whose buffer is full.
	w := p.writer(nil)
	small := []byte(": ping\n\n")
	large := []byte("data: " + strings.Repeat("x", 1<<20) + "\n\n")
	for range 8 {
		if err := w.write(small); err != nil {
			t.Fatal(err)
		}
		if err := w.write(large); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	if !w.blocked {
		t.Fatal("writer not blocked with nothing written")
	}
	if cap(w.buf) > gatherLimit {
		t.Errorf("gathering buffer grew to %d bytes, want at most %d", cap(w.buf), gatherLimit)
	}
	copied := 0
	for _, b := range w.pending {
		if len(b) == len(large) && &b[0] != &large[0] {
			copied++
		}
	}
	if copied > 0 {
		t.Errorf("%d of 8 large frames were copied for the blocked write, want them written from the message", copied)
	}
}

func TestWritersThatGrewLargeAreNotPooled(t *testing.T) {
	p := &pump{}
	w := p.writer(nil)
	w.buf = make([]byte, 0, 4*maxPooledBuffer)
	w.pending = make([][]byte, 0, 4*maxPooledFrames)
	p.release(w)
	if cap(w.buf) != 0 || cap(w.pending) != 0 {
		t.Errorf("released writer keeps a %d-byte buffer and room for %d frames; want both dropped", cap(w.buf), cap(w.pending))
	}
}
