package netpump

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type testItem struct {
	Task
	id      int
	serving atomic.Int32
	flags   atomic.Uint32 // every flag it was served with
	turns   atomic.Int32
}

const (
	flagA Flags = 1 << iota
	flagB
)

func TestSchedulerServesAnItemOneWorkerAtATimeAndLosesNoWake(t *testing.T) {
	s := NewScheduler[*testItem]()
	items := make([]*testItem, 50)
	var overlap atomic.Int32
	s.Start(4, func() func(*testItem, Flags) {
		return func(it *testItem, f Flags) {
			if it.serving.Add(1) > 1 {
				overlap.Add(1)
			}
			it.flags.Or(uint32(f))
			it.turns.Add(1)
			it.serving.Add(-1)
			s.Done(it)
		}
	})
	for i := range items {
		items[i] = &testItem{id: i}
		if !s.Admit(items[i]) {
			t.Fatal("Admit refused an item before Drain")
		}
		s.Done(items[i])
	}
	var wakers sync.WaitGroup
	for w := range 8 {
		wakers.Add(1)
		go func() {
			defer wakers.Done()
			for range 200 {
				for _, it := range items {
					s.Wake(it, Flags(1<<(w%2)))
				}
			}
		}()
	}
	wakers.Wait()
	// Every wake after an item's last turn started must bring another turn:
	// the last wakes' flags arrive.
	for _, it := range items {
		before := it.turns.Load()
		s.Wake(it, flagB)
		waitFor(t, func() bool { return it.turns.Load() > before })
		if got := Flags(it.flags.Load()); got != flagA|flagB {
			t.Errorf("item %d served with flags %b, want %b", it.id, got, flagA|flagB)
		}
	}
	if n := overlap.Load(); n > 0 {
		t.Errorf("an item was served by two workers at once %d times", n)
	}
	for _, it := range items {
		s.Drop(it)
	}
	s.Stop()
}

func TestSchedulerQueuesANewItemOnlyWhenItsCreatorIsDoneWithItsWakesGathered(t *testing.T) {
	s := NewScheduler[*testItem]()
	served := make(chan Flags, 4)
	s.Start(2, func() func(*testItem, Flags) {
		return func(it *testItem, f Flags) { served <- f }
	})
	defer s.Stop()
	it := &testItem{}
	s.Admit(it)
	s.Wake(it, flagA)
	s.Wake(it, flagB)
	select {
	case f := <-served:
		t.Fatalf("item served (flags %b) while its creator still held it", f)
	case <-time.After(50 * time.Millisecond):
	}
	s.Done(it)
	if f := <-served; f != flagA|flagB {
		t.Errorf("first turn had flags %b, want both wakes' %b", f, flagA|flagB)
	}
	s.Drop(it)
	s.Wake(it, flagA)
	select {
	case f := <-served:
		t.Errorf("a dropped item was served again (flags %b)", f)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestSchedulerDrainRefusesNewItemsAndReportsWhenTheLastOneIsDropped(t *testing.T) {
	s := NewScheduler[*testItem]()
	dropped := make(chan *testItem, 2)
	s.Start(1, func() func(*testItem, Flags) {
		return func(it *testItem, f Flags) {
			if s.Draining() {
				s.Drop(it)
				dropped <- it
				return
			}
			s.Done(it)
		}
	})
	a, b := &testItem{}, &testItem{}
	s.Admit(a)
	s.Admit(b)
	s.Done(a)
	s.Done(b)
	drained := s.Drain()
	select {
	case <-s.Stopping():
	default:
		t.Error("Stopping not closed by Drain")
	}
	if s.Admit(&testItem{}) {
		t.Error("Admit took an item after Drain")
	}
	s.Wake(a, 0)
	<-dropped
	if isClosed(drained) {
		t.Fatal("drained closed with an item still served")
	}
	s.Wake(b, 0)
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("drained not closed once every item was dropped")
	}
	s.Stop()
}

func TestAWriteWaitingForAClientGivesUpAtOnceWhenItsStreamEnds(t *testing.T) {
	relay, client := net.Pipe()
	defer relay.Close()
	defer client.Close()
	var p WriterPool
	w := p.Get(nil) // nothing written at once: every frame waits for WriteRest
	if err := w.Frame([]byte("an event the client never reads")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil || !w.Blocked() {
		t.Fatalf("Flush: %v, blocked %v; want a blocked writer", err, w.Blocked())
	}
	ended := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- w.WriteRest(relay, time.Hour, ended, nil) }()
	close(ended)
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("WriteRest returned %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WriteRest still waiting for the client after its stream ended (timeout is an hour)")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
