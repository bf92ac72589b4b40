// Package limit caps the streams one relay serves: in total, and per
// subscriber. Every transport (SSE, WebSocket) admits a connection through the
// same Limiter before opening its stream, so the caps hold across transports.
package limit

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Reasons a connection is refused.
var (
	// ErrRelayFull: the relay serves MaxConnections streams (HTTP 503 with
	// Retry-After: the client should try again, perhaps on another relay).
	ErrRelayFull = errors.New("this relay is at its connection limit; retry later or on another relay")
	// ErrUserFull: the subscriber already has MaxConnectionsPerUser streams
	// on this relay (HTTP 429).
	ErrUserFull = errors.New("too many open streams for this subscriber")
)

// Limiter counts open streams. The zero value and a nil *Limiter admit
// everything.
type Limiter struct {
	max, perUser int
	// RetryAfter is suggested to clients refused because the relay is full.
	RetryAfter time.Duration

	mu     sync.Mutex
	total  int
	byUser map[string]int
}

// New returns a Limiter allowing max streams in total and perUser streams
// per subscriber (0: unlimited).
func New(max, perUser int) *Limiter {
	return &Limiter{max: max, perUser: perUser, RetryAfter: 5 * time.Second, byUser: map[string]int{}}
}

// Acquire counts one more stream of user, or refuses it with ErrRelayFull
// or ErrUserFull. On success the caller must call release exactly once when
// the stream ends (extra calls are ignored).
func (l *Limiter) Acquire(user string) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max {
		return nil, ErrRelayFull
	}
	if l.perUser > 0 && l.byUser[user] >= l.perUser {
		return nil, fmt.Errorf("%w: at most %d per subscriber", ErrUserFull, l.perUser)
	}
	l.total++
	if l.byUser == nil {
		l.byUser = map[string]int{}
	}
	l.byUser[user]++
	var once sync.Once
	return func() { once.Do(func() { l.release(user) }) }, nil
}

func (l *Limiter) release(user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byUser[user]--; l.byUser[user] <= 0 {
		delete(l.byUser, user)
	}
}

// Open returns how many streams are open.
func (l *Limiter) Open() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
