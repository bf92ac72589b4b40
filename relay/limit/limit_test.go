package limit_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/pgrelay/pgrelay/relay/limit"
)

func TestLimiterCapsTotalAndPerUserAndFreesOnRelease(t *testing.T) {
	t.Parallel()
	l := limit.New(3, 2)
	relA1, err := l.Acquire("a")
	if err != nil {
		t.Fatalf("first stream of a: %v", err)
	}
	if _, err := l.Acquire("a"); err != nil {
		t.Fatalf("second stream of a: %v", err)
	}
	if _, err := l.Acquire("a"); !errors.Is(err, limit.ErrUserFull) {
		t.Fatalf("third stream of a: got %v, want ErrUserFull", err)
	}
	if _, err := l.Acquire("b"); err != nil {
		t.Fatalf("first stream of b: %v", err)
	}
	if _, err := l.Acquire("c"); !errors.Is(err, limit.ErrRelayFull) {
		t.Fatalf("fourth stream: got %v, want ErrRelayFull", err)
	}
	relA1()
	relA1() // a second release must not free a second slot
	if got := l.Open(); got != 2 {
		t.Fatalf("Open() after one release (twice) = %d, want 2", got)
	}
	if _, err := l.Acquire("c"); err != nil {
		t.Fatalf("stream after a release: %v", err)
	}
	if _, err := l.Acquire("d"); !errors.Is(err, limit.ErrRelayFull) {
		t.Fatalf("got %v, want ErrRelayFull again", err)
	}
}

func TestNilAndZeroLimitersAdmitEverything(t *testing.T) {
	t.Parallel()
	for name, l := range map[string]*limit.Limiter{"nil": nil, "unlimited": limit.New(0, 0)} {
		for range 100 {
			if _, err := l.Acquire("a"); err != nil {
				t.Fatalf("%s limiter refused: %v", name, err)
			}
		}
	}
}

func TestLimiterHoldsItsCapUnderConcurrentAcquires(t *testing.T) {
	t.Parallel()
	l := limit.New(10, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	for range 100 {
		wg.Go(func() {
			if _, err := l.Acquire("u"); err == nil {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if admitted != 10 || l.Open() != 10 {
		t.Fatalf("admitted %d, open %d; want 10 and 10", admitted, l.Open())
	}
}

func TestAFullRelayRefusesEveryoneBeforeTheSubscribersCapIsLookedAt(t *testing.T) {
	t.Parallel()
	l := limit.New(1, 1)
	if _, err := l.Acquire("a"); err != nil {
		t.Fatal(err)
	}
	// The relay cap is checked first: a full relay tells every client to go
	// elsewhere, whoever it is.
	if _, err := l.Acquire("a"); !errors.Is(err, limit.ErrRelayFull) {
		t.Errorf("second stream of a on a full relay: got %v, want ErrRelayFull", err)
	}
	l2 := limit.New(0, 1)
	if _, err := l2.Acquire("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Acquire("a"); !errors.Is(err, limit.ErrUserFull) {
		t.Fatalf("got %v, want ErrUserFull", err)
	}
	if _, err := l2.Acquire("b"); err != nil {
		t.Errorf("another subscriber refused: %v", err)
	}
}
