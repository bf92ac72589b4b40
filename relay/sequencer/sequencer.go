// Package sequencer announces new events. Exactly one relay per database is
// the sequencer at a time: the one whose session relay.sequencer names while
// that session is alive. While events flow it polls the log every few
// milliseconds (longer while they flow fast, see Pace) and sends one sealed
// notification per batch; as soon as a few polls have found nothing it
// marks itself idle, and the first few inserts after that wake it with a
// notification. So a busy system pays no NOTIFY per inserted row, a burst
// after a quiet period pays a handful, and a quiet or slow one (a few
// inserts a second) costs a slow poll instead of hundreds of empty ones a
// second.
//
// The election is a row only the relay's role may write, not an advisory
// lock: any login can take an advisory lock, and a session squatting on it
// would have stopped every announcement.
package sequencer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/seal"
)

// WakeChannel is what capture triggers notify when the sequencer is idle.
const WakeChannel = "pgrelay_wake"

// ErrLostElection means another session became the sequencer while this one
// thought it was (the row was changed by hand, or this session was taken for
// dead).
var ErrLostElection = errors.New("another session is the sequencer now")

// Config tunes the sequencer.
type Config struct {
	// Poll is the interval between log polls while events flow.
	Poll time.Duration
	// PollMax is the longest interval between polls while events arrive
	// at StretchRate or faster (see Pace). Zero, or at most Poll: the
	// interval is always Poll.
	PollMax time.Duration
	// StretchRate is the arrival rate, in events per second, from which
	// the interval stretches towards PollMax (zero: DefaultStretchRate).
	StretchRate float64
	// IdleAfter is how long without new events before going idle. Short
	// (a few polls): every empty poll costs PostgreSQL a query that the
	// producers' cores pay for, while going idle costs the next insert one
	// NOTIFY, which is nothing at the rates where polls would be empty.
	IdleAfter time.Duration
	// IdlePoll is the interval between polls while idle: it bounds the delay
	// of an event whose wake-up raced with going idle.
	IdlePoll time.Duration
	// Retry is the interval between attempts to become the sequencer.
	Retry time.Duration
	// OnLeader, if set, is called with true when this relay becomes the
	// sequencer and false when it stops being it.
	OnLeader func(bool)
	// Duties, if set, runs while this relay is the sequencer (e.g. pruning
	// the log) on the leader's context.
	Duties func(ctx context.Context) error
	// Capture, if set, runs while this relay is the sequencer: capture
	// mode wal (relay/walcapture), which appends the events it decodes to
	// the log, where the poll loop finds and announces them as any others.
	// It returns only when its context ends.
	Capture func(ctx context.Context) error
	// News, if set, says that this process has just appended events to the
	// log (the capture does, after each log transaction): the sequencer
	// polls at once instead of at the end of its Poll wait, so an appended
	// event does not also wait out the poll interval. Send without
	// blocking into a channel of capacity 1: news that is not taken yet
	// already stands for any that follows.
	News <-chan struct{}
}

// Sequencer runs the election and, while elected, the announce loop.
type Sequencer struct {
	connect func(ctx context.Context) (*pgx.Conn, error)
	key     *seal.Key
	cfg     Config
	log     *slog.Logger

	warnedRearm bool // the missing privilege to rewind wake-up tickets was logged

	// Read by Stats from other goroutines (the metrics' scrapes).
	polls, stretchedPolls atomic.Uint64
	wait                  atomic.Int64 // nanoseconds; 0 while not leading
}

// DefaultStretchRate is the arrival rate, in events per second, from which
// the poll interval stretches unless Config.StretchRate says otherwise. At a
// few hundred a second a poll finds one event or none and latency is all it
// buys; at thousands a second, where the producers fill the database's
// cores, each poll's cost is what a longer wait saves.
const DefaultStretchRate = 1000

// Stats is what the sequencer reports about its polling.
type Stats struct {
	// Polls counts this relay's polls of the log as the sequencer.
	Polls uint64
	// StretchedPolls counts the polls after which the sequencer waited
	// longer than Config.Poll, because events arrived fast.
	StretchedPolls uint64
	// Wait is the wait chosen after the latest poll: from Poll to PollMax
	// while events flow, IdlePoll while idle, 0 while this relay is not
	// the sequencer.
	Wait time.Duration
}

// Stats returns the polling counts and the current wait.
func (s *Sequencer) Stats() Stats {
	return Stats{Polls: s.polls.Load(), StretchedPolls: s.stretchedPolls.Load(), Wait: time.Duration(s.wait.Load())}
}

// pace is the rule for the interval between polls that cfg asks for.
func (c Config) pace() Pace {
	rate := c.StretchRate
	if rate <= 0 {
		rate = DefaultStretchRate
	}
	return Pace{Short: c.Poll, Long: max(c.PollMax, c.Poll), StretchRate: rate}
}

// New returns a Sequencer using connections from connect (which must log in
// as the relay's role) and sealing its announcements with key.
func New(connect func(ctx context.Context) (*pgx.Conn, error), key *seal.Key, cfg Config, log *slog.Logger) *Sequencer {
	return &Sequencer{connect: connect, key: key, cfg: cfg, log: log}
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
		// Retry is the pace of election attempts, kept short for a quick
		// takeover; a failed connection waits longer, so an unreachable
		// database is not asked ten times a second.
		if err := ctxtime.Sleep(ctx, max(s.cfg.Retry, reconnectDelay)); err != nil {
			return err
		}
	}
}

// awaitWake is how long the sequencer stays busy after a wake-up whose event
// it has not found yet: longer than readers remember the list of other
// databases' transactions (eventlog.ForeignListAge), after which the event
// is either visible or behind a transaction that is really running.
const awaitWake = 4 * eventlog.ForeignListAge

// reconnectDelay is the least wait before the sequencer's session is opened
// again after it failed.
const reconnectDelay = time.Second

// runOnce connects, waits to win the election, then leads until the
// connection fails or ctx is done.
func (s *Sequencer) runOnce(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect sequencer: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		won, err := claim(ctx, conn)
		if err != nil {
			return err
		}
		if won {
			break
		}
		if err := ctxtime.Sleep(ctx, s.cfg.Retry); err != nil {
			return err
		}
	}
	// Handing over at once on a clean stop: the others need not wait for
	// this session to end before one of them takes over.
	defer release(context.WithoutCancel(ctx), conn)
	s.log.Info("this relay is now the sequencer")
	if s.cfg.OnLeader != nil {
		s.cfg.OnLeader(true)
		defer s.cfg.OnLeader(false)
	}
	leadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	dutiesDone := make(chan struct{})
	go func() {
		defer close(dutiesDone)
		if s.cfg.Duties != nil {
			if err := s.cfg.Duties(leadCtx); err != nil && leadCtx.Err() == nil {
				s.log.Warn("sequencer duties stopped", "err", err)
			}
		}
	}()
	captureDone := make(chan struct{})
	go func() {
		defer close(captureDone)
		if s.cfg.Capture != nil {
			_ = s.cfg.Capture(leadCtx)
		}
	}()
	err = s.lead(leadCtx, conn)
	cancel()
	// The capture's log transaction ends with the leadership: a successor
	// resumes the slot from what was committed.
	<-captureDone
	<-dutiesDone
	return err
}

func (s *Sequencer) lead(ctx context.Context, conn *pgx.Conn) error {
	// Every poll's announcements are a transaction (NOTIFY takes an xid),
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
	pid := conn.PgConn().PID()
	cursor, err := eventlog.Tail(ctx, conn)
	if err != nil {
		return err
	}
	if err := setIdle(ctx, conn, false); err != nil {
		return err
	}
	// Announce once on taking over: relays may have missed the previous
	// sequencer's last announcement.
	if err := s.announce(ctx, conn, pid, eventlog.EncodePosition(cursor)); err != nil {
		return err
	}
	defer s.wait.Store(0)
	idle, woken := false, false
	lastNews, emptyPolls := time.Now(), 0
	pace := s.cfg.pace()
	// busyWait is the interval between polls while events flow, as Pace
	// chose it after the latest poll; lastPoll is when that poll began.
	busyWait, lastPoll := pace.Short, time.Now()
	// awaited is when a wake-up came that no poll has answered yet: its
	// event may still sit behind the horizon (a transaction of another
	// database this session's list does not know yet). Its ticket is spent,
	// so going idle before finding it would leave it for the idle poll.
	var awaited time.Time
	log := eventlog.NewReader(eventlog.ForeignListAge)
	for {
		began := time.Now()
		found, err := s.poll(ctx, conn, pid, log, &cursor)
		if err != nil {
			return err
		}
		s.polls.Add(1)
		elapsed := began.Sub(lastPoll)
		lastPoll = began
		switch {
		case found > 0:
			awaited = time.Time{}
		case woken && awaited.IsZero():
			awaited = time.Now()
		}
		if found > 0 || woken {
			lastNews, emptyPolls = time.Now(), 0
		} else {
			emptyPolls++
		}
		waiting := !awaited.IsZero() && time.Since(awaited) < awaitWake
		switch {
		case idle && (found > 0 || woken):
			// Announced first, flag cleared after: the events that woke
			// the sequencer are not kept waiting for this write. Until it
			// commits, producers that find it idle draw tickets that are
			// already spent.
			if err := setIdle(ctx, conn, false); err != nil {
				return err
			}
			idle = false
		case !idle && !waiting && emptyPolls >= idleAfterPolls && time.Since(lastNews) > s.cfg.IdleAfter:
			if err := s.rearmWake(ctx, conn); err != nil {
				return err
			}
			if err := setIdle(ctx, conn, true); err != nil {
				return err
			}
			idle, woken = true, false
			busyWait = pace.Short
			// Once more at once: a producer that read the flag just before
			// it changed did not notify, and its event may have committed
			// since the last poll. Only one still running now waits for
			// the idle poll.
			continue
		}
		wait := s.cfg.IdlePoll
		if !idle {
			busyWait = pace.Next(busyWait, found, elapsed)
			wait = busyWait
			if wait > pace.Short {
				s.stretchedPolls.Add(1)
			}
		}
		s.wait.Store(int64(wait))
		woken, err = waitForWake(ctx, conn, wait, s.cfg.News)
		if err != nil {
			return err
		}
	}
}

// poll announces the events settled after *cursor, if any, moves *cursor
// past them, and returns how many it found (announceLimit+1 for a burst
// larger than announceLimit, which it does not count). One query while
// events trickle in: the events themselves, which are the news and the
// announcement at once; a larger burst costs a second one, for the newest
// position.
func (s *Sequencer) poll(ctx context.Context, conn *pgx.Conn, pid uint32, log *eventlog.Reader, cursor *eventlog.ID) (int, error) {
	events, err := log.ReadAfter(ctx, conn, *cursor, announceLimit+1)
	if err != nil {
		return 0, fmt.Errorf("poll the log after %s: %w", *cursor, err)
	}
	if len(events) == 0 {
		return 0, nil
	}
	if len(events) > announceLimit {
		newest, ok, err := log.Newest(ctx, conn, *cursor)
		if err != nil {
			return 0, err
		}
		if !ok { // pruned meanwhile: what was read is still settled
			newest = events[len(events)-1].ID
		}
		if err := s.announce(ctx, conn, pid, eventlog.EncodePosition(newest)); err != nil {
			return 0, err
		}
		*cursor = newest
		return len(events), nil
	}
	newest := events[len(events)-1].ID
	payloads, err := eventlog.EncodeAnnouncements(*cursor, events, newest)
	if err != nil {
		return 0, err
	}
	if err := s.announceAll(ctx, conn, pid, payloads); err != nil {
		return 0, err
	}
	*cursor = newest
	return len(events), nil
}

// rearmWake rewinds the wake-up tickets (relay.wake_tickets), so that the
// first few inserts after this sequencer goes idle wake it. Without the
// privilege (a relay role set up before the tickets existed, see
// docs/roles.sql) it goes idle anyway: inserts then wake nobody and wait
// for the idle poll, which is slower but loses nothing.
func (s *Sequencer) rearmWake(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "SELECT pg_catalog.setval('relay.wake_tickets', 1, false)")
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "42P01"):
		if !s.warnedRearm {
			s.log.Warn("cannot rewind the wake-up tickets: inserts after an idle period wait for --idle-poll; grant UPDATE ON SEQUENCE relay.wake_tickets to the relay's role (docs/roles.sql)", "err", err)
			s.warnedRearm = true
		}
		return nil
	default:
		return fmt.Errorf("rewind the wake-up tickets: %w", err)
	}
}

// idleAfterPolls is how many polls in a row must find nothing, beside
// IdleAfter having passed, before the sequencer goes idle. Time alone is
// not enough on a server short of CPU: one wait that oversleeps by tens of
// milliseconds would send it to sleep in the middle of a burst, and every
// such nap costs the producers another round of wake-ups.
const idleAfterPolls = 10

// waitForWake waits up to d for a wake-up notification or news from this
// process; either is a wake-up.
func waitForWake(ctx context.Context, conn *pgx.Conn, d time.Duration, news <-chan struct{}) (bool, error) {
	select {
	case <-news:
		return true, nil
	default:
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var nudged atomic.Bool
	if news != nil {
		waited := make(chan struct{})
		defer close(waited)
		go func() {
			select {
			case <-news:
				nudged.Store(true)
				cancel()
			case <-waited:
			}
		}()
	}
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
		return nudged.Load(), nil
	}
	return false, fmt.Errorf("wait for wake-up: %w", err)
}

// claimSQL makes this session the sequencer unless a live session already
// is. A session that ended leaves its row behind; holder_started tells a
// process id the system gave to a new session from the one that claimed.
// Where backend_start cannot be seen (a session of another role without
// pg_read_all_stats), the holder counts as alive: the election errs towards
// waiting, never towards two sequencers.
const claimSQL = `
UPDATE relay.sequencer s
   SET holder_pid = pg_backend_pid(),
       holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()),
       changed_at = now()
 WHERE s.holder_pid IS NULL
    OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                    WHERE a.pid = s.holder_pid
                      AND (a.backend_start IS NULL OR a.backend_start = s.holder_started))`

// claim tries to make conn's session the sequencer.
func claim(ctx context.Context, conn *pgx.Conn) (bool, error) {
	tag, err := conn.Exec(ctx, claimSQL)
	if err != nil {
		return false, fmt.Errorf("claim the sequencer role (the relay's role needs UPDATE on relay.sequencer, see docs/roles.sql): %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// release gives the role up, if conn's session still holds it.
func release(ctx context.Context, conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, "UPDATE relay.sequencer SET holder_pid = NULL, holder_started = NULL WHERE holder_pid = pg_backend_pid()")
}

// setIdle records whether the sequencer polls slowly (and the triggers must
// wake it), and checks on the way that this session still holds the role.
func setIdle(ctx context.Context, conn *pgx.Conn, idle bool) error {
	tag, err := conn.Exec(ctx, "UPDATE relay.sequencer SET idle = $1, changed_at = now() WHERE holder_pid = pg_backend_pid()", idle)
	if err != nil {
		return fmt.Errorf("mark sequencer idle=%v: %w", idle, err)
	}
	if tag.RowsAffected() != 1 {
		return ErrLostElection
	}
	return nil
}

// announceLimit is how many new events one poll announces with their rows;
// beyond that (a burst) relays are told the position and read the log.
const announceLimit = 64

// announceAll sends one poll's announcements in one round trip and one
// transaction: the statements of a pipeline up to its one Sync commit
// together, so PostgreSQL delivers the notifications together and in
// order, and a poll whose events fill several payloads (the longer the
// poll interval, the more often) pays one commit, not one per payload.
func (s *Sequencer) announceAll(ctx context.Context, conn *pgx.Conn, pid uint32, payloads []string) error {
	if len(payloads) == 1 {
		return s.announce(ctx, conn, pid, payloads[0])
	}
	var b pgx.Batch
	for _, p := range payloads {
		b.Queue(announceSQL, eventlog.AnnounceChannel, s.key.Seal(eventlog.AnnounceChannel, pid, []byte(p)))
	}
	if err := conn.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("announce events in %d notifications: %w", len(payloads), err)
	}
	return nil
}

// announceSQL sends one notification on the events channel.
const announceSQL = "SELECT pg_notify($1, $2)"

// announce sends one announcement, sealed for this session.
func (s *Sequencer) announce(ctx context.Context, conn *pgx.Conn, pid uint32, plain string) error {
	if _, err := conn.Exec(ctx, announceSQL, eventlog.AnnounceChannel, s.key.Seal(eventlog.AnnounceChannel, pid, []byte(plain))); err != nil {
		return fmt.Errorf("announce events: %w", err)
	}
	return nil
}
