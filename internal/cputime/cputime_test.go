package cputime

import "testing"

func TestMeterCountsBusyWork(t *testing.T) {
	m := Start()
	x := 0
	for i := range 50_000_000 {
		x += i ^ (x >> 3)
	}
	if got := m.Per(1); got <= 0 {
		t.Errorf("CPU time of a busy loop = %v ns (x=%d), want > 0", got, x)
	}
	if m.Per(0) != 0 {
		t.Errorf("Per(0) = %v, want 0", m.Per(0))
	}
}
