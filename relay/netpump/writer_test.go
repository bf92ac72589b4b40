package netpump

import (
	"bytes"
	"strings"
	"testing"
)

func TestABlockedWriterListsLargeFramesWithoutCopyingThem(t *testing.T) {
	var p WriterPool
	// Without a descriptor nothing can be written at once: the writer is
	// blocked from its first write, as on a socket whose buffer is full.
	w := p.Get(nil)
	small := []byte(": ping\n\n")
	large := []byte("data: " + strings.Repeat("x", 1<<20) + "\n\n")
	for range 8 {
		if err := w.Frame(small); err != nil {
			t.Fatal(err)
		}
		if err := w.Frame(large); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !w.Blocked() {
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

func TestABlockedWriterKeepsCopiesOfScratchWrites(t *testing.T) {
	var p WriterPool
	w := p.Get(nil)
	// A large frame blocks the writer; what follows is written into a
	// scratch buffer that the caller reuses at once.
	if err := w.Frame(make([]byte, 2*gatherLimit)); err != nil {
		t.Fatal(err)
	}
	if !w.Blocked() {
		t.Fatal("writer not blocked with nothing written")
	}
	scratch := []byte("header")
	if _, err := w.Write(scratch); err != nil {
		t.Fatal(err)
	}
	copy(scratch, "XXXXXX")
	last := w.pending[len(w.pending)-1]
	if !bytes.Equal(last, []byte("header")) {
		t.Errorf("pending write %q after the caller reused its buffer, want %q", last, "header")
	}
}

func TestWritersThatGrewLargeAreNotPooled(t *testing.T) {
	var p WriterPool
	w := p.Get(nil)
	w.buf = make([]byte, 0, 4*maxPooledBuffer)
	w.pending = make([][]byte, 0, 4*maxPooledFrames)
	p.Put(w)
	if cap(w.buf) != 0 || cap(w.pending) != 0 {
		t.Errorf("released writer keeps a %d-byte buffer and room for %d frames; want both dropped", cap(w.buf), cap(w.pending))
	}
}

func TestWheelVisitsEveryMemberOncePerTurn(t *testing.T) {
	w := NewWheel[int]()
	slots := map[int]int{}
	for m := range 1000 {
		slots[m] = w.Add(m)
	}
	if !w.Remove(7, slots[7]) || w.Remove(7, slots[7]) {
		t.Fatal("Remove of a member: want true once, then false")
	}
	seen := map[int]int{}
	for i := range WheelSlots {
		if n := len(w.Slot(i)); n < 1000/WheelSlots-1 || n > 1000/WheelSlots+1 {
			t.Errorf("slot %d holds %d members, want about %d", i, n, 1000/WheelSlots)
		}
		for m := range w.Slot(i) {
			seen[m]++
		}
	}
	if len(seen) != 999 || w.Len() != 999 {
		t.Errorf("a turn visits %d members, Len %d; want 999 each", len(seen), w.Len())
	}
	for m, n := range seen {
		if n != 1 {
			t.Errorf("member %d visited %d times in a turn, want once", m, n)
		}
	}
}
