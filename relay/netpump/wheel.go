package netpump

import "time"

// WheelSlots is how many groups a heartbeat interval is divided into.
const WheelSlots = 64

// Wheel spreads heartbeats over their interval: members are dealt into
// WheelSlots groups in turn, and a ticker every interval/WheelSlots visits
// one group, so every member is visited once per interval but a pump never
// puts thousands of heartbeats in front of the next event. A Wheel is not
// safe for concurrent use: its owner's lock guards it.
type Wheel[T comparable] struct {
	slots []map[T]struct{}
	next  int
	n     int
}

// NewWheel returns an empty wheel.
func NewWheel[T comparable]() *Wheel[T] {
	w := &Wheel[T]{slots: make([]map[T]struct{}, WheelSlots)}
	for i := range w.slots {
		w.slots[i] = map[T]struct{}{}
	}
	return w
}

// Tick is how often a wheel for heartbeats every interval turns one slot.
func Tick(interval time.Duration) time.Duration { return interval / WheelSlots }

// Add deals m into the next slot and returns the slot.
func (w *Wheel[T]) Add(m T) int {
	slot := w.next
	w.next = (w.next + 1) % WheelSlots
	w.slots[slot][m] = struct{}{}
	w.n++
	return slot
}

// Remove takes m out of slot, and reports whether it was there.
func (w *Wheel[T]) Remove(m T, slot int) bool {
	if _, ok := w.slots[slot][m]; !ok {
		return false
	}
	delete(w.slots[slot], m)
	w.n--
	return true
}

// Slot returns the members of slot i (0 ≤ i < WheelSlots), for the caller
// to range over without changing the wheel meanwhile.
func (w *Wheel[T]) Slot(i int) map[T]struct{} { return w.slots[i] }

// Len returns how many members the wheel holds.
func (w *Wheel[T]) Len() int { return w.n }
