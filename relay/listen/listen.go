// Package listen owns a relay's one LISTEN connection. It reconnects with
// backoff after any failure and, on every (re)connect, listens first and then
// asks for a catch-up, so nothing committed while it was away is lost. It
// never blocks on clients: notifications only wake the parts that do the work.
package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"

	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
)

// Handler is what notifications drive.
type Handler interface {
	// Announced receives an announcement of new events: the payload of a
	// notification on eventlog.AnnounceChannel and the process id of the session that
	// sent it, or "" and 0 after a (re)connect, meaning "read the log". It
	// must not block.
	Announced(payload string, from uint32)
	// FiltersChanged asks for a filter reload. It must not block.
	FiltersChanged(filter.Change)
	// Connected reports whether the listener is connected and caught up on
	// notifications it may have missed.
	Connected(bool)
}

// Listener is the LISTEN loop.
type Listener struct {
	connect  func(ctx context.Context) (*pgx.Conn, error)
	handler  Handler
	log      *slog.Logger
	minDelay time.Duration
	maxDelay time.Duration

	reconnects atomic.Uint64

	mu        sync.Mutex
	failures  int
	connected time.Time
	connects  int
	backlogs  int
}

// New returns a Listener that connects with connect (which should set
// application_name to pgrelay-listener).
func New(connect func(ctx context.Context) (*pgx.Conn, error), h Handler, log *slog.Logger) *Listener {
	return &Listener{connect: connect, handler: h, log: log, minDelay: 50 * time.Millisecond, maxDelay: 5 * time.Second}
}

// Reconnects counts successful reconnects (not the first connect).
func (l *Listener) Reconnects() uint64 { return l.reconnects.Load() }

// Run listens until ctx is done.
func (l *Listener) Run(ctx context.Context) error {
	pl := &pgxlisten.Listener{
		Connect: l.connectWithBackoff,
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil {
				l.handler.Connected(false)
				l.log.Warn("listener connection lost; reconnecting", "err", err)
			}
		},
		// Backoff is applied in connectWithBackoff: the first retry after a
		// lost connection is quick, repeated failures slow down.
		ReconnectDelay: -1,
	}
	channels := map[string]handlerFunc{
		eventlog.AnnounceChannel: {
			notify:  func(n *pgconn.Notification) { l.handler.Announced(n.Payload, n.PID) },
			backlog: func() { l.handler.Announced("", 0) },
		},
		filter.ChangeChannel: {
			notify:  func(n *pgconn.Notification) { l.handler.FiltersChanged(filter.ParseChange(n.Payload)) },
			backlog: func() { l.handler.FiltersChanged(filter.Change{All: true}) },
		},
	}
	for name, h := range channels {
		backlog := h.backlog
		h.backlog = func() { backlog(); l.backlogDone(len(channels)) }
		pl.Handle(name, h)
	}
	err := pl.Listen(ctx)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// backlogDone marks the listener connected once each of the channels is
// listened to and its catch-up requested.
func (l *Listener) backlogDone(channels int) {
	l.mu.Lock()
	l.backlogs++
	done := l.backlogs == channels
	l.mu.Unlock()
	if done {
		l.handler.Connected(true)
	}
}

func (l *Listener) connectWithBackoff(ctx context.Context) (*pgx.Conn, error) {
	l.handler.Connected(false)
	l.mu.Lock()
	// A connection that lived for a while resets the backoff; one that died
	// at once counts as another failure.
	if !l.connected.IsZero() {
		if time.Since(l.connected) > l.maxDelay {
			l.failures = 0
		}
		l.connected = time.Time{}
	}
	delay := time.Duration(0)
	if l.failures > 0 {
		delay = l.minDelay << min(l.failures-1, 10)
		delay = min(delay, l.maxDelay)
	}
	l.failures++
	l.backlogs = 0
	l.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	conn, err := l.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect listener: %w", err)
	}
	l.mu.Lock()
	l.connected = time.Now()
	l.connects++
	reconnect := l.connects > 1
	l.mu.Unlock()
	if reconnect {
		l.log.Info("listener reconnected")
		l.reconnects.Add(1)
	}
	return conn, nil
}

type handlerFunc struct {
	notify  func(*pgconn.Notification)
	backlog func()
}

func (h handlerFunc) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	h.notify(n)
	return nil
}

func (h handlerFunc) HandleBacklog(context.Context, string, *pgx.Conn) error {
	h.backlog()
	return nil
}
