package netpump

import (
	"sync"
)

// Flags are the reasons an item was woken (events to write, a readable
// socket, a heartbeat due…): bits its pump defines. They accumulate until a
// worker takes the item, which is handed all of them at once.
type Flags uint32

// Task is the scheduler's part of an item: embed it in the item's struct.
// Its zero value is an item held by whoever created it: wakes are recorded
// but do not queue it until its holder calls Done.
type Task struct {
	state   taskState
	pending Flags
}

func (t *Task) task() *Task { return t }

// Item is what a Scheduler schedules: a pointer to a struct embedding Task.
type Item interface {
	comparable
	task() *Task
}

// taskState says who may touch an item.
type taskState uint8

const (
	held   taskState = iota // its creator, a worker or a blocked write owns it
	rerun                   // held, and woken again since
	idle                    // nobody: waiting to be woken
	queued                  // waiting for a worker
	gone                    // ended: wakes are ignored
)

// Scheduler hands items that were woken to a few workers, each item to one
// worker at a time: an item woken while it is served is served again
// afterwards, never by two workers at once, so whoever holds an item may
// touch its connection without a lock of its own. It also counts the items
// it serves, so that a pump that stops can wait until every one has ended.
type Scheduler[T Item] struct {
	mu       sync.Mutex
	work     sync.Cond
	ready    []T
	items    int // admitted and not dropped
	quit     bool
	stopping chan struct{} // closed by Drain
	drained  chan struct{} // closed once stopping and items is 0

	workers sync.WaitGroup
}

// NewScheduler returns a scheduler with no workers; call Start.
func NewScheduler[T Item]() *Scheduler[T] {
	s := &Scheduler[T]{stopping: make(chan struct{}), drained: make(chan struct{})}
	s.work.L = &s.mu
	return s
}

// Start runs n workers until Stop. Each calls newServe once, so that it may
// keep scratch buffers of its own, then calls what it returned with every
// item it takes and the flags the item was woken with. The item is the
// worker's until it calls Done or Drop, or hands it to someone who will.
func (s *Scheduler[T]) Start(n int, newServe func() func(T, Flags)) {
	s.workers.Add(n)
	for range n {
		go func() {
			defer s.workers.Done()
			serve := newServe()
			for {
				it, f, ok := s.next()
				if !ok {
					return
				}
				serve(it, f)
			}
		}()
	}
}

// Admit counts it, newly created and so held by the caller, among the items
// served. It returns false once Drain was called: the caller then ends it
// on its own.
func (s *Scheduler[T]) Admit(it T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Draining() {
		return false
	}
	s.items++
	return true
}

// Wake records f for it and queues it for a worker, unless it is held
// (it is queued again when its holder is done) or already queued.
func (s *Scheduler[T]) Wake(it T, f Flags) {
	s.mu.Lock()
	s.wakeLocked(it, f)
	s.mu.Unlock()
}

func (s *Scheduler[T]) wakeLocked(it T, f Flags) {
	t := it.task()
	switch t.state {
	case gone:
		return
	case idle:
		t.state = queued
		s.ready = append(s.ready, it)
		s.work.Signal()
	case held:
		t.state = rerun
	}
	t.pending |= f
}

// Done hands it back, after a worker or a blocked write is done with it: it
// is queued at once if it was woken meanwhile.
func (s *Scheduler[T]) Done(it T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := it.task()
	if t.state == rerun {
		t.state = queued
		s.ready = append(s.ready, it)
		s.work.Signal()
		return
	}
	t.state = idle
}

// Drop ends it, held by the caller: it is not served again.
func (s *Scheduler[T]) Drop(it T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := it.task()
	t.state, t.pending = gone, 0
	s.items--
	s.drainedLocked()
}

// Drain admits no more items and returns a channel closed once every item
// admitted has been dropped. The pump wakes its items so that each sees
// Draining and ends.
func (s *Scheduler[T]) Drain() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.Draining() {
		close(s.stopping)
	}
	s.drainedLocked()
	return s.drained
}

func (s *Scheduler[T]) drainedLocked() {
	if s.items > 0 || !s.Draining() {
		return
	}
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// Draining reports whether Drain was called.
func (s *Scheduler[T]) Draining() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
	}
}

// Stopping is closed by Drain: for what waits on a client (a blocked write)
// and must give up when the pump stops.
func (s *Scheduler[T]) Stopping() <-chan struct{} { return s.stopping }

// Stop ends the workers once the queue is empty, and waits for them.
func (s *Scheduler[T]) Stop() {
	s.mu.Lock()
	s.quit = true
	s.work.Broadcast()
	s.mu.Unlock()
	s.workers.Wait()
}

// next waits for a queued item and hands it to the caller with its flags;
// false once Stop was called and nothing is queued.
func (s *Scheduler[T]) next() (T, Flags, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.ready) == 0 && !s.quit {
		s.work.Wait()
	}
	var zero T
	if len(s.ready) == 0 {
		return zero, 0, false
	}
	it := s.ready[0]
	s.ready[0] = zero
	s.ready = s.ready[1:]
	t := it.task()
	f := t.pending
	t.state, t.pending = held, 0
	return it, f, true
}
