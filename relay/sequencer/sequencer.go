// Package sequencer announces new events. Exactly one relay per database is
// the sequencer at a time (it holds an advisory lock on its own connection).
// While events flow it polls the log every few milliseconds and sends one
// notification per batch; when nothing has happened for a while it marks
// itself idle, and the capture triggers then wake it with a notification.
// So a busy system pays no NOTIFY per inserted row, and an idle one costs a
// slow poll.
package sequencer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// lockKey is the advisory lock the sequencer holds ("pgrseq").
const lockKey int64 = 0x7067_7273_6571

// WakeChannel is what capture triggers notify when the sequencer is idle.
const WakeChannel = "pgrelay_wake"

// foreignRefresh is how long the sequencer trusts its list of transactions
// running in other databases (see eventlog.Reader).
const foreignRefresh = 250 * time.Millisecond

// EventsChannel is what the sequencer notifies when the log has grown.
const EventsChannel = "pgrelay_events"

// Config tunes the sequencer.
type Config struct {
	// Poll is the interval between log polls while events flow.
	Poll time.Duration
	// IdleAfter is how long without new events before going idle.
	IdleAfter time.Duration
	// IdlePoll is the interval between polls while idle: it bounds the delay
	// of an event whose wake-up raced with going idle.
	IdlePoll time.Duration
	// Retry is the interval between attempts to become the sequencer.
	Retry time.Duration
}

// Sequencer runs the election and, while elected, the announce loop.
type Sequencer struct {
	connect func(ctx context.Context) (*pgx.Conn, error)
	cfg     Config
	log     *slog.Logger
	// OnLeader, if set, is called with true when this relay becomes the
	// sequencer and false when it stops being it.
	OnLeader func(bool)
	// Duties, if set, runs while this relay is the sequencer (e.g. pruning
	// the log) on the leader's context.
	Duties func(ctx context.Context) error
}

// New returns a Sequencer using connections from connect.
func New(connect func(ctx context.Context) (*pgx.Conn, error), cfg Config, log *slog.Logger) *Sequencer {
	return &Sequencer{connect: connect, cfg: cfg, log: log}
}

// Run competes for the sequencer role until ctx is done.
func (s *Sequencer) Run(ctx context.Context) error {
	for {
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			s.log.Warn("sequencer connection failed; retrying", "err", err)
		}
		if err := sleep(ctx, s.cfg.Retry); err != nil {
			return err
		}
	}
}

// runOnce connects, waits to win the lock, then leads until the connection
// fails or ctx is done.
func (s *Sequencer) runOnce(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect sequencer: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var won bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey).Scan(&won); err != nil {
			return fmt.Errorf("try sequencer lock: %w", err)
		}
		if won {
			break
		}
		if err := sleep(ctx, s.cfg.Retry); err != nil {
			return err
		}
	}
	s.log.Info("this relay is now the sequencer")
	if s.OnLeader != nil {
		s.OnLeader(true)
		defer s.OnLeader(false)
	}
	leadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	dutiesDone := make(chan struct{})
	go func() {
		defer close(dutiesDone)
		if s.Duties != nil {
			if err := s.Duties(leadCtx); err != nil && leadCtx.Err() == nil {
				s.log.Warn("sequencer duties stopped", "err", err)
			}
		}
	}()
	err = s.lead(leadCtx, conn)
	cancel()
	<-dutiesDone
	return err
}

func (s *Sequencer) lead(ctx context.Context, conn *pgx.Conn) error {
	// Every announcement is a transaction of its own (NOTIFY takes an xid),
	// and with synchronous commit each would wait for a WAL flush before
	// PostgreSQL delivers it: a flush on every event's way to the clients,
	// and the slowest part of it when the disk is busy. Nothing this session
	// writes needs to survive a crash: the events it announces were made
	// durable by their producers' commits, a lost announcement is recovered
	// by every relay's catch-up read after it reconnects, and the idle flag
	// is rewritten by the next sequencer when it takes over.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = off"); err != nil {
		return fmt.Errorf("turn off synchronous commit for announcements: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+WakeChannel); err != nil {
		return fmt.Errorf("listen for wake-ups: %w", err)
	}
	cursor, err := eventlog.Tail(ctx, conn)
	if err != nil {
		return err
	}
	if err := setIdle(ctx, conn, false); err != nil {
		return err
	}
	// Announce once on taking over: relays may have missed the previous
	// sequencer's last announcement.
	if err := announce(ctx, conn, cursor); err != nil {
		return err
	}
	idle := false
	lastNews := time.Now()
	log := eventlog.NewReader(foreignRefresh)
	for {
		newest, found, err := log.Newest(ctx, conn, cursor)
		switch {
		case err != nil:
			return err
		case found:
			if err := announceEvents(ctx, conn, cursor, newest); err != nil {
				return err
			}
			cursor = newest
			lastNews = time.Now()
			if idle {
				if err := setIdle(ctx, conn, false); err != nil {
					return err
				}
				idle = false
			}
		}
		if !idle && time.Since(lastNews) > s.cfg.IdleAfter {
			if err := setIdle(ctx, conn, true); err != nil {
				return err
			}
			idle = true
		}
		wait := s.cfg.Poll
		if idle {
			wait = s.cfg.IdlePoll
		}
		woken, err := waitForWake(ctx, conn, wait)
		if err != nil {
			return err
		}
		if woken && idle {
			if err := setIdle(ctx, conn, false); err != nil {
				return err
			}
			idle = false
			lastNews = time.Now()
		}
	}
}

// waitForWake waits up to d for a wake-up notification.
func waitForWake(ctx context.Context, conn *pgx.Conn, d time.Duration) (bool, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := conn.WaitForNotification(wctx)
	if err == nil {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if wctx.Err() != nil {
		// pgx may have had to cancel a read in progress; the connection
		// stays usable, as pgx documents for WaitForNotification timeouts.
		return false, nil
	}
	return false, fmt.Errorf("wait for wake-up: %w", err)
}

func setIdle(ctx context.Context, conn *pgx.Conn, idle bool) error {
	if _, err := conn.Exec(ctx, "UPDATE relay.sequencer SET idle = $1, changed_at = now()", idle); err != nil {
		return fmt.Errorf("mark sequencer idle=%v: %w", idle, err)
	}
	return nil
}

// announceLimit is how many new events one poll announces with their rows;
// beyond that (a burst) relays are told the position and read the log.
const announceLimit = 64

// announceEvents tells every relay about the events in (cursor, newest]:
// with their rows when they fit in notifications, so relays need not read
// them from the log, else by position.
func announceEvents(ctx context.Context, conn *pgx.Conn, cursor, newest eventlog.ID) error {
	events, err := eventlog.ReadBetween(ctx, conn, cursor, newest, announceLimit+1)
	if err != nil {
		return err
	}
	if len(events) > announceLimit {
		return announce(ctx, conn, newest)
	}
	payloads, err := eventlog.EncodeAnnouncements(cursor, events, newest)
	if err != nil {
		return err
	}
	for _, p := range payloads {
		if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", EventsChannel, p); err != nil {
			return fmt.Errorf("announce events up to %s: %w", newest, err)
		}
	}
	return nil
}

// announce tells every relay the newest position only: they read the log.
func announce(ctx context.Context, conn *pgx.Conn, newest eventlog.ID) error {
	if _, err := conn.Exec(ctx, "SELECT pg_notify($1, $2)", EventsChannel, newest.String()); err != nil {
		return fmt.Errorf("announce events up to %s: %w", newest, err)
	}
	return nil
}

// Holder returns the process id of the session that is the sequencer of the
// database q is connected to, or 0 if there is none. Relays trust only its
// announcements: any session that can connect may send a notification on
// EventsChannel, but only the sequencer holds the lock.
func Holder(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (uint32, error) {
	// pg_locks shows a bigint advisory key as its high and low halves,
	// with objsubid 1.
	var pid uint32
	err := q.QueryRow(ctx, `
SELECT pid FROM pg_locks
 WHERE locktype = 'advisory' AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = $1 AND objid = $2 AND objsubid = 1`,
		lockKey>>32, lockKey&0xffff_ffff).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("look up the sequencer's session: %w", err)
	}
	return pid, nil
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
