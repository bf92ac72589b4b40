// Package walcapture is capture mode `wal`: it streams the database's
// replication slot (pgoutput, publication pgrelay) and appends the events of
// the topics' inserted rows to the log, in commit order, in batches.
//
// Exactly once rests on one rule: the end LSN of the last source transaction
// whose events are in the log (relay.capture.applied_lsn) is written in the
// same transaction as those events, and the slot's position is confirmed to
// the server only after that transaction committed. A capture killed at any
// point therefore leaves either both the events and the LSN or neither, and
// the slot streams again from its last confirmed position at most what is
// already in the log, which is skipped by its LSN.
//
// Only the elected sequencer runs it. Two captures never write at once: the
// server lets one session at a time stream a slot, and the LSN is advanced
// by compare-and-set, so the log transaction of a capture that lost the slot
// meanwhile fails instead of appending twice.
package walcapture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
)

// Publication is the publication the slot decodes (migration 0008).
const Publication = "pgrelay"

// Observer receives what operators watch; every method may be called from
// Run's goroutine only.
type Observer interface {
	// Appended reports a log transaction holding rows events, of source
	// transactions the newest of which committed at commitTime.
	Appended(rows int, commitTime time.Time)
	// CaughtUp reports that nothing decoded is waiting to be appended.
	CaughtUp()
	// SlotLost reports whether a loss of the slot is on record (since the
	// last relay.set_capture call, which acknowledges it).
	SlotLost(lost bool)
}

// Config is what a Capture needs.
type Config struct {
	// Connect opens a session as the relay's role, for the log's writes.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// ConnectReplication opens a logical replication session
	// (replication=database) as the relay's role, which needs REPLICATION.
	ConnectReplication func(ctx context.Context) (*pgconn.PgConn, error)
	// IdleCheck is how often the mode is looked at while no slot exists.
	IdleCheck time.Duration
	// Gather is how long a pause in the stream must be before what was
	// received is appended (at most 10ms after the first of it). Zero, the
	// default: no pause is waited for, what was received is appended as
	// soon as nothing more is already read from the connection. A pause
	// shorter than a millisecond is no shorter in effect: the Go runtime
	// sleeps in its network poller for whole milliseconds, so a 0.2ms
	// wait on a quiet process ends after 1.1–1.4ms, and every event waits
	// for it. Batches grow with the load without one, since what arrives
	// while a log transaction commits is read in one go once it has.
	Gather time.Duration
	// BatchRows and BatchBytes bound what one append call carries (and,
	// for a source transaction larger than that, what is held in memory:
	// its rows are written in pieces inside the open log transaction).
	BatchRows, BatchBytes int
	// StatusInterval is how often the position is confirmed while idle.
	StatusInterval time.Duration
	// AfterCommit, if set, runs after each log transaction committed and
	// before the slot's position is confirmed; an error ends Run there, as
	// a crash at that moment would (tests use it).
	AfterCommit func(appliedLSN pglogrepl.LSN) error
	// Wake, if set, is called after each log transaction that appended
	// events committed.
	Wake     func()
	Observer Observer
}

// maxGather bounds how long received transactions wait for the stream to
// pause before they are appended anyway.
const maxGather = 10 * time.Millisecond

// Capture runs the decoding while its Run is called.
type Capture struct {
	cfg Config
	log *slog.Logger
}

// New returns a Capture.
func New(cfg Config, log *slog.Logger) *Capture {
	if cfg.IdleCheck <= 0 {
		cfg.IdleCheck = 500 * time.Millisecond
	}
	cfg.Gather = max(cfg.Gather, 0)
	if cfg.BatchRows <= 0 {
		cfg.BatchRows = 1000
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 4 << 20
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 5 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return &Capture{cfg: cfg, log: log}
}

type nopObserver struct{}

func (nopObserver) Appended(int, time.Time) {}
func (nopObserver) CaughtUp()               {}
func (nopObserver) SlotLost(bool)           {}

// ErrFenced means the log's position moved under this capture: another
// session appended, so this one's transaction was not committed.
var ErrFenced = errors.New("the captured position moved under this session")

// Run decodes while ctx lives, reconnecting after failures. It returns only
// ctx's error.
func (c *Capture) Run(ctx context.Context) error {
	for {
		err := c.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			c.log.Warn("wal capture stopped; retrying", "err", err)
		}
		t := time.NewTimer(max(c.cfg.IdleCheck, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// state is relay.capture as the capture reads it.
type state struct {
	mode, requested string
	decodedMode     string
	// lastSwitch is the newest switch row's id, decodedSwitch the newest
	// at or before applied: equal once the decoder reached the last switch.
	lastSwitch, decodedSwitch int64
	// resetPending: a slot was lost while wal was in force, and its reset
	// marker waits for the transactions running then to end.
	resetPending  bool
	slot          string // relay.capture.slot_name
	ownSlot       string // relay.capture_slot_name()
	ownSlotExists bool
	ownSlotLost   bool
	applied       pglogrepl.LSN
	slotExists    bool
	walStatus     string
	lostAt        *time.Time
}

const stateSQL = `
SELECT c.mode, c.requested, c.decoded_mode, c.last_switch, c.decoded_switch, c.reset_pending IS NOT NULL, coalesce(c.slot_name, ''), c.applied_lsn::text,
       s.slot_name IS NOT NULL, coalesce(s.wal_status, ''), c.slot_lost_at,
       relay.capture_slot_name(),
       EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots o WHERE o.slot_name = relay.capture_slot_name()),
       EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots o WHERE o.slot_name = relay.capture_slot_name() AND o.wal_status = 'lost')
  FROM relay.capture c
  LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = c.slot_name`

func loadState(ctx context.Context, conn *pgx.Conn) (state, error) {
	var st state
	var applied string
	if err := conn.QueryRow(ctx, stateSQL).Scan(&st.mode, &st.requested, &st.decodedMode, &st.lastSwitch, &st.decodedSwitch, &st.resetPending, &st.slot, &applied,
		&st.slotExists, &st.walStatus, &st.lostAt, &st.ownSlot, &st.ownSlotExists, &st.ownSlotLost); err != nil {
		return st, fmt.Errorf("read the capture state (the relay's role needs SELECT and UPDATE on relay.capture, see docs/roles.sql): %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(applied)
	if err != nil {
		return st, fmt.Errorf("parse applied LSN %q: %w", applied, err)
	}
	st.applied = lsn
	return st, nil
}

// session runs on one regular connection until it fails.
func (c *Capture) session(ctx context.Context) error {
	conn, err := c.cfg.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect for wal capture: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		st, err := loadState(ctx, conn)
		if err != nil {
			return err
		}
		c.cfg.Observer.SlotLost(st.lostAt != nil)
		switch {
		case st.slot != "" && (!st.slotExists || st.walStatus == "lost"):
			// Whatever the mode: a slot relay.capture still names may hold
			// changes not yet appended.
			if err := c.slotLost(ctx, conn, st, ""); err != nil {
				return err
			}
			continue
		case st.resetPending && st.slot == "":
			// A lost slot's marker, first: it must precede the rows of the
			// next switch to wal.
			if err := completeSwitch(ctx, conn, c.log); err != nil {
				return err
			}
		case st.requested == "wal" && st.mode == "trigger":
			// A switch to wal: the slot first, then the switch.
			if err := c.createSlotAndSwitch(ctx, conn, st); err != nil {
				return err
			}
			continue
		case st.slot == "" && st.ownSlotExists && st.requested == "trigger":
			// A switch to wal that was called off after this relay (or one
			// before it) created the slot: nothing decodes it.
			if err := dropStraySlot(ctx, conn, st.ownSlot, c.log); err != nil {
				return err
			}
			continue
		case st.slot == "":
			// Trigger mode, no slot to drain.
		case st.drained():
			// Everything up to the switch back is in the log.
			if err := dropDrainedSlot(ctx, conn, c.log); err != nil {
				return err
			}
			continue
		default:
			if err := c.stream(ctx, conn, st); err != nil {
				return err
			}
			continue
		}
		if err := ctxtime.Sleep(ctx, c.cfg.IdleCheck); err != nil {
			return err
		}
	}
}

// drained reports whether everything the slot holds for the log is in it:
// trigger is in force and asked for, and the decoder reached the last
// switch, which put trigger in force. decoded_mode alone would not do:
// before the decoder reaches a switch to wal it reads trigger too, and a
// switch back may follow before it does (a sequencer that created the slot
// and switched, then stopped before decoding; or a stream that failed and
// waits to be resumed while the mode goes to wal and back on this slot).
func (st state) drained() bool {
	return st.mode == "trigger" && st.requested == "trigger" && st.decodedMode == "trigger" && st.decodedSwitch == st.lastSwitch
}

// slotLost handles a slot that cannot give the changes any more: the server
// removed WAL it still needed (max_slot_wal_keep_size), or the slot was
// dropped. The rows committed since the last appended transaction are gone.
// relay.capture_slot_lost writes a reset marker into the log at that point,
// so every subscriber that crosses it is told to reload, falls back to the
// triggers so the gap ends there, and leaves wal requested; the lost slot
// is dropped in the same transaction, and the session loop then creates a
// new one and switches back to wal as for any switch. Said as loudly as
// possible, once per loss; relay.capture.slot_lost_at keeps it for /readyz
// and the metrics until a set_capture call acknowledges it.
func (c *Capture) slotLost(ctx context.Context, conn *pgx.Conn, st state, detail string) error {
	if detail == "" {
		detail = "wal_status " + st.walStatus
		if !st.slotExists {
			detail = "the slot no longer exists"
		}
	}
	var handled bool
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT relay.capture_slot_lost($1, $2)", st.slot, detail).Scan(&handled); err != nil {
			return fmt.Errorf("record the lost replication slot (the relay's role needs EXECUTE on relay.capture_slot_lost, see docs/roles.sql): %w", err)
		}
		if !handled {
			return nil
		}
		// An invalidated slot still exists, under the name the next one
		// takes. Left alone if a session still streams it: the switch to
		// wal drops it once it is free.
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active", st.slot); err != nil {
			return fmt.Errorf("drop the lost replication slot %s: %w", st.slot, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.cfg.Observer.SlotLost(true)
	if handled {
		c.log.Error("REPLICATION SLOT LOST: rows committed since the last appended transaction are missing from the log; subscribers are sent a reset at this point. "+
			"The triggers capture from now on, and the sequencer creates a new slot and switches back to wal; raise max_slot_wal_keep_size (docs/operations.md), then acknowledge with SELECT relay.set_capture('wal')",
			"slot", st.slot, "detail", detail, "applied_lsn", st.applied.String())
	}
	return nil
}

// dropLostSlot drops this database's slot if it is invalidated and free: a
// slot lost while a session still streamed it, which a new switch to wal
// needs the name of.
func dropLostSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost' AND NOT active", slot); err != nil {
		return fmt.Errorf("drop the lost replication slot %s: %w", slot, err)
	}
	return nil
}

// createSlotAndSwitch completes a requested switch to wal: it creates the
// slot over the replication protocol (the slot then decodes from before
// the switch), and makes wal the mode in force.
func (c *Capture) createSlotAndSwitch(ctx context.Context, conn *pgx.Conn, st state) error {
	if st.ownSlotLost {
		if err := dropLostSlot(ctx, conn, st.ownSlot); err != nil {
			return err
		}
		st.ownSlotExists = false
	}
	if !st.ownSlotExists {
		rc, err := c.cfg.ConnectReplication(ctx)
		if err != nil {
			return fmt.Errorf("open the replication connection to create slot %s (the relay's role needs REPLICATION): %w", st.ownSlot, err)
		}
		_, err = pglogrepl.CreateReplicationSlot(ctx, rc, st.ownSlot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT",
		})
		rc.Close(context.WithoutCancel(ctx))
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "42710":
			// Created meanwhile, or still being created, by a relay that
			// was the sequencer before: complete_capture_switch waits for
			// its creation to end.
		case err != nil:
			return fmt.Errorf("create replication slot %s: %w", st.ownSlot, err)
		default:
			c.log.Info("capture mode wal requested: replication slot created", "slot", st.ownSlot)
		}
	}
	var switched bool
	if err := conn.QueryRow(ctx, "SELECT relay.complete_capture_switch()").Scan(&switched); err != nil {
		return fmt.Errorf("complete the switch to capture mode wal (the relay's role needs EXECUTE on relay.complete_capture_switch, see docs/roles.sql): %w", err)
	}
	if switched {
		c.log.Info("capture mode is wal: the sequencer captures from the replication slot", "slot", st.ownSlot)
		return nil
	}
	// Called off, or the slot is still being created elsewhere (or still
	// held by the session that created it): look again shortly.
	return ctxtime.Sleep(ctx, c.cfg.IdleCheck)
}

// dropStraySlot drops this database's slot when relay.capture knows of no
// slot and no switch to wal is asked for, under the lock set_capture takes.
func dropStraySlot(ctx context.Context, conn *pgx.Conn, slot string, log *slog.Logger) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var requested string
		var known *string
		if err := tx.QueryRow(ctx, "SELECT requested, slot_name FROM relay.capture FOR UPDATE").Scan(&requested, &known); err != nil {
			return fmt.Errorf("lock the capture state: %w", err)
		}
		if requested != "trigger" || known != nil {
			return nil
		}
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active", slot); err != nil {
			return fmt.Errorf("drop the unused replication slot %s: %w", slot, err)
		}
		log.Info("dropped a replication slot no switch needs any more", "slot", slot)
		return nil
	})
}

// dropDrainedSlot drops the slot once the switch back to triggers is in the
// log, under the lock set_capture takes, so a switch to wal that is under
// way either keeps the slot or fails with a clear error.
func dropDrainedSlot(ctx context.Context, conn *pgx.Conn, log *slog.Logger) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var st state
		err := tx.QueryRow(ctx, "SELECT mode, requested, decoded_mode, last_switch, decoded_switch, coalesce(slot_name, '') FROM relay.capture FOR UPDATE").
			Scan(&st.mode, &st.requested, &st.decodedMode, &st.lastSwitch, &st.decodedSwitch, &st.slot)
		if err != nil {
			return fmt.Errorf("lock the capture state: %w", err)
		}
		slot := st.slot
		if !st.drained() || slot == "" {
			return nil
		}
		if err := awaitSlotReleased(ctx, tx, slot); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", slot); err != nil {
			return fmt.Errorf("drop the drained replication slot %s: %w", slot, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE relay.capture SET slot_name = NULL, changed_at = now()"); err != nil {
			return fmt.Errorf("record the dropped replication slot: %w", err)
		}
		log.Info("capture mode trigger: every change up to the switch is in the log; replication slot dropped", "slot", slot)
		return nil
	})
}

// awaitSlotReleased waits up to a few seconds for the session that streamed
// slot to let it go: the server releases a slot when its walsender exits,
// a moment after the stream's connection closed, and refuses to drop an
// active one. If it is still held then, the drop fails and is tried again.
func awaitSlotReleased(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, slot string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var active bool
		err := q.QueryRow(ctx, "SELECT coalesce((SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), false)", slot).Scan(&active)
		if err != nil {
			return fmt.Errorf("look whether replication slot %s is still streamed: %w", slot, err)
		}
		if !active || time.Now().After(deadline) {
			return nil
		}
		if err := ctxtime.Sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// relation is what the stream told about a published table.
type relation struct {
	switches bool     // relay.capture_switches
	topics   []string // the topics whose source it is
	columns  []column
}

type column struct {
	key  string // the column name, JSON-encoded
	json bool   // json or jsonb: its text is JSON already
}

const (
	oidJSON  = 114
	oidJSONB = 3802
)

// chunk is rows of one topic, contiguous in commit order.
type chunk struct {
	topic string
	rows  []byte // a JSON array under construction, without the closing bracket
	n     int
}

// stream decodes the slot until the connection fails, the position moves
// under it, or the switch back to triggers has been appended (then nil).
func (c *Capture) stream(ctx context.Context, conn *pgx.Conn, st state) error {
	rc, err := c.cfg.ConnectReplication(ctx)
	if err != nil {
		return fmt.Errorf("open the replication connection (the relay's role needs REPLICATION): %w", err)
	}
	defer rc.Close(context.WithoutCancel(ctx))
	err = pglogrepl.StartReplication(ctx, rc, st.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + Publication + "'"},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55000" && strings.Contains(pgErr.Message+pgErr.Detail, "invalidated") {
			return c.slotLost(ctx, conn, st, pgErr.Message+": "+pgErr.Detail)
		}
		return fmt.Errorf("start streaming slot %s: %w", st.slot, err)
	}
	c.log.Info("capture mode wal: streaming the replication slot", "slot", st.slot, "applied_lsn", st.applied.String(), "decoded_mode", st.decodedMode)
	d := &decoder{
		c: c, conn: conn, rc: rc,
		applied: st.applied, confirmed: st.applied, mode: st.decodedMode, storedMode: st.decodedMode,
		switchID: st.decodedSwitch, storedSwitch: st.decodedSwitch,
		rels: map[uint32]*relation{}, lostChecked: time.Now(),
	}
	return d.run(ctx)
}

// decoder holds one streaming session's state.
type decoder struct {
	c    *Capture
	conn *pgx.Conn
	rc   *pgconn.PgConn

	applied      pglogrepl.LSN // relay.capture.applied_lsn as committed
	storedMode   string        // relay.capture.decoded_mode as committed
	storedSwitch int64         // relay.capture.decoded_switch as committed
	confirmed    pglogrepl.LSN // what the server was last told
	mode         string        // the mode in force at the stream's position
	switchID     int64         // the newest switch row at the stream's position

	rels map[uint32]*relation

	// lostChecked is when relay.capture.slot_lost_at was last read, so an
	// acknowledged loss stops showing while the stream runs on.
	lostChecked time.Time
	// settled is when a pending switch back was last looked for.
	settled time.Time

	inTx     bool          // between a Begin and its Commit
	skipTx   bool          // the transaction is in the log already
	txRows   int           // rows of the current transaction so far
	done     pglogrepl.LSN // end of the newest complete transaction received
	pending  bool          // complete transactions not yet committed to the log
	firstAt  time.Time     // when the oldest of them was complete
	commitAt time.Time     // commit time of the newest

	chunks    []chunk
	bytes     int
	row       []byte // the row being rendered, reused
	lastBatch int    // rows of the last log transaction
	open      bool   // a log transaction is open: rows were written already
	written   int    // rows written in it
}

func (d *decoder) run(ctx context.Context) error {
	defer func() {
		if d.open {
			_, _ = d.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	// The stream is read with a read deadline on its connection, set only
	// when it changes, rather than with a context per message: a context
	// with a deadline costs a timer and a watch of the connection on every
	// receive, three of them per captured row, for a deadline that stays
	// the same across most of them. ctx still ends a blocked read at once.
	var readDeadline time.Time
	stop := context.AfterFunc(ctx, func() { _ = d.rc.Conn().SetReadDeadline(time.Now()) })
	defer stop()
	lastStatus := time.Now()
	for {
		if d.idle() && time.Since(d.settled) >= d.c.cfg.IdleCheck {
			if err := d.settle(ctx); err != nil {
				return err
			}
		}
		deadline := lastStatus.Add(d.c.cfg.StatusInterval)
		if next := d.settled.Add(d.c.cfg.IdleCheck); d.idle() && next.Before(deadline) {
			deadline = next
		}
		if d.pending && !d.inTx {
			deadline = d.appendAt(time.Now())
		}
		if !deadline.Equal(readDeadline) {
			if err := d.rc.Conn().SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("set the replication stream's read deadline: %w", err)
			}
			readDeadline = deadline
			// A cancellation that came before the deadline was set
			// would be overridden by it: looked at once it is set.
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		msg, err := d.rc.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !pgconn.Timeout(err) {
				return fmt.Errorf("receive from the replication slot: %w", err)
			}
			if d.pending && !d.inTx {
				drained, err := d.commit(ctx)
				if err != nil || drained {
					return err
				}
				continue
			}
			if time.Since(lastStatus) < d.c.cfg.StatusInterval {
				continue // woken to look at the pending step only
			}
			if err := d.status(ctx, 0); err != nil {
				return err
			}
			lastStatus = time.Now()
			continue
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				if ka.ReplyRequested {
					if err := d.status(ctx, ka.ServerWALEnd); err != nil {
						return err
					}
					lastStatus = time.Now()
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse WAL data: %w", err)
				}
				drained, err := d.handle(ctx, xld.WALData)
				if err != nil || drained {
					return err
				}
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("the server ended the replication stream")
		}
	}
}

// handle takes one pgoutput message.
func (d *decoder) handle(ctx context.Context, data []byte) (bool, error) {
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return false, fmt.Errorf("decode pgoutput message: %w", err)
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		return false, d.relation(ctx, m)
	case *pglogrepl.BeginMessage:
		d.inTx, d.txRows = true, 0
		// The transaction ends at or before the LSN it names: if that is
		// in the log already, all of it is.
		d.skipTx = m.FinalLSN < d.applied
	case *pglogrepl.InsertMessage:
		if d.skipTx {
			return false, nil
		}
		rel := d.rels[m.RelationID]
		if rel == nil {
			return false, fmt.Errorf("insert into relation %d before its description", m.RelationID)
		}
		if rel.switches {
			d.switchID, d.mode, err = switchRow(rel, m.Tuple)
			return false, err
		}
		if d.mode != "wal" || len(rel.topics) == 0 {
			return false, nil
		}
		row, err := appendRowJSON(d.row[:0], rel, m.Tuple)
		if err != nil {
			return false, err
		}
		d.row = row
		for _, topic := range rel.topics {
			d.add(topic, row)
		}
		d.txRows++
		if d.bytes >= d.c.cfg.BatchBytes || d.rowsBuffered() >= d.c.cfg.BatchRows {
			// A large transaction: write what came so far inside the open
			// log transaction, so memory stays bounded.
			return false, d.write(ctx)
		}
	case *pglogrepl.CommitMessage:
		d.inTx = false
		if d.skipTx || m.TransactionEndLSN <= d.applied {
			return false, nil
		}
		d.done = m.TransactionEndLSN
		d.commitAt = m.CommitTime
		if !d.pending {
			d.pending, d.firstAt = true, time.Now()
		}
		// A switch is recorded at once: a switch back to triggers may
		// let the slot go.
		if d.switchID != d.storedSwitch || d.bytes >= d.c.cfg.BatchBytes || d.rowsBuffered()+d.written >= d.c.cfg.BatchRows {
			return d.commit(ctx)
		}
	}
	return false, nil
}

// busyRows is the size of a log transaction that makes the next one gather
// for maxGather, whatever the pauses of the stream.
const busyRows = 20

// appendAt is when the complete transactions received are appended if
// nothing else arrives before: once the stream pauses for Gather (with
// none, once nothing more received is waiting to be read: a deadline that
// has passed ends a read at once unless a message is buffered already), or
// has run on for maxGather since the oldest of them, so a trickle goes at
// once and a backlog in large batches. Under a steady high rate the stream
// pauses often enough to cut batches short, and every log transaction
// costs the server a commit and the sequencer a poll: so after a batch of
// busyRows or more, which only a high rate fills in that time, the next
// one gathers for maxGather, and pauses count again once the rate has
// fallen so that a batch stays smaller.
func (d *decoder) appendAt(now time.Time) time.Time {
	oldest := d.firstAt.Add(maxGather)
	if d.lastBatch >= busyRows {
		return oldest
	}
	if at := now.Add(d.c.cfg.Gather); at.Before(oldest) {
		return at
	}
	return oldest
}

// idle reports whether nothing received is waiting for the log and no log
// transaction is open: the session's connection is free for other queries.
func (d *decoder) idle() bool {
	return !d.inTx && !d.pending && len(d.chunks) == 0 && !d.open
}

// settle completes a pending step back to triggers (or a pending reset
// marker) once the transactions it waits for have ended. It looks at most
// every IdleCheck, and the decoder goes on appending meanwhile: the switch
// row it writes is decoded like any other, and ends the stream there.
func (d *decoder) settle(ctx context.Context) error {
	d.settled = time.Now()
	var pending bool
	if err := d.conn.QueryRow(ctx, "SELECT switch_back_pending OR reset_pending IS NOT NULL FROM relay.capture").Scan(&pending); err != nil {
		return fmt.Errorf("read whether a switch back to triggers is pending: %w", err)
	}
	if !pending {
		return nil
	}
	return completeSwitch(ctx, d.conn, d.c.log)
}

// completeSwitch calls relay.complete_capture_switch for a step that waits
// for older transactions to end.
func completeSwitch(ctx context.Context, conn *pgx.Conn, log *slog.Logger) error {
	var done bool
	if err := conn.QueryRow(ctx, "SELECT relay.complete_capture_switch()").Scan(&done); err != nil {
		return fmt.Errorf("complete the pending capture switch (the relay's role needs EXECUTE on relay.complete_capture_switch, see docs/roles.sql): %w", err)
	}
	if done {
		log.Info("every transaction older than the step back to capture mode trigger has ended: the step is complete")
	}
	return nil
}

func (d *decoder) rowsBuffered() int {
	n := 0
	for _, ch := range d.chunks {
		n += ch.n
	}
	return n
}

// relation records a table's description and which topics it feeds.
func (d *decoder) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	rel := &relation{switches: m.Namespace == "relay" && m.RelationName == "capture_switches"}
	for _, col := range m.Columns {
		key, _ := json.Marshal(col.Name)
		rel.columns = append(rel.columns, column{key: string(key), json: col.DataType == oidJSON || col.DataType == oidJSONB})
	}
	if !rel.switches {
		rows, err := d.conn.Query(ctx, "SELECT topic FROM relay.topics WHERE source = $1::oid ORDER BY topic", m.RelationID)
		if err != nil {
			return fmt.Errorf("look up the topics of %s.%s: %w", m.Namespace, m.RelationName, err)
		}
		rel.topics, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("look up the topics of %s.%s: %w", m.Namespace, m.RelationName, err)
		}
	}
	d.rels[m.RelationID] = rel
	return nil
}

// switchRow reads a relay.capture_switches row: its id and the mode it
// puts in force.
func switchRow(rel *relation, t *pglogrepl.TupleData) (int64, string, error) {
	var id int64
	var mode string
	for i, col := range rel.columns {
		if i >= len(t.Columns) {
			break
		}
		switch col.key {
		case `"id"`:
			n, err := strconv.ParseInt(string(t.Columns[i].Data), 10, 64)
			if err != nil {
				return 0, "", fmt.Errorf("capture switch with id %q: %w", t.Columns[i].Data, err)
			}
			id = n
		case `"mode"`:
			mode = string(t.Columns[i].Data)
		}
	}
	if mode != "wal" && mode != "trigger" {
		return 0, "", fmt.Errorf("capture switch %d to unknown mode %q", id, mode)
	}
	if id <= 0 {
		return 0, "", errors.New("capture switch without an id")
	}
	return id, mode, nil
}

// appendRowJSON appends a decoded row to dst as the object
// relay.append_captured reads: each column's text, or its JSON for json and
// jsonb columns.
func appendRowJSON(dst []byte, rel *relation, t *pglogrepl.TupleData) ([]byte, error) {
	if len(t.Columns) != len(rel.columns) {
		return dst, fmt.Errorf("row has %d columns, its relation %d", len(t.Columns), len(rel.columns))
	}
	b := append(dst, '{')
	for i, v := range t.Columns {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, rel.columns[i].key...)
		b = append(b, ':')
		switch v.DataType {
		case pglogrepl.TupleDataTypeNull:
			b = append(b, "null"...)
		case pglogrepl.TupleDataTypeText:
			if rel.columns[i].json && json.Valid(v.Data) {
				b = append(b, v.Data...)
				continue
			}
			b = appendJSONString(b, v.Data)
		default:
			// Inserts carry every value; 'u' (unchanged TOAST) is for updates.
			return dst, fmt.Errorf("column %s arrived as %q, not as text", rel.columns[i].key, v.DataType)
		}
	}
	return append(b, '}'), nil
}

// appendJSONString appends s as a JSON string. It does by hand what
// json.Marshal of a string does, without its allocations, on every text
// column of every captured row: escape quotes, backslashes and control
// characters, and pass valid UTF-8 through (the server parses it into
// jsonb, so HTML escapes would buy nothing). Text that is not valid UTF-8
// (possible under SQL_ASCII) goes through json.Marshal, which replaces
// what is invalid with U+FFFD.
func appendJSONString(b, s []byte) []byte {
	if !utf8.Valid(s) {
		m, _ := json.Marshal(string(s)) // a string always marshals
		return append(b, m...)
	}
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i, c := range s {
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// add appends a row to the rows of topic, reusing the buffers of the chunks
// already appended (up to a size: a chunk of large rows is not kept).
func (d *decoder) add(topic string, row []byte) {
	if n := len(d.chunks); n == 0 || d.chunks[n-1].topic != topic {
		var buf []byte
		if n < cap(d.chunks) {
			if old := d.chunks[:n+1][n].rows; cap(old) <= maxKeptChunk {
				buf = old[:0]
			}
		}
		d.chunks = append(d.chunks, chunk{topic: topic, rows: append(buf, '[')})
	}
	ch := &d.chunks[len(d.chunks)-1]
	if ch.n > 0 {
		ch.rows = append(ch.rows, ',')
	}
	ch.rows = append(ch.rows, row...)
	ch.n++
	d.bytes += len(row) + 1
}

// maxKeptChunk is the largest chunk buffer kept for the next batch.
const maxKeptChunk = 256 << 10

// appendSQL appends one chunk's rows to the log.
const appendSQL = "SELECT relay.append_captured($1, $2::text::jsonb)"

// advanceSQL records the captured position in the log transaction, by
// compare-and-set on the position this session last committed. It is sent
// in the same pipeline as the COMMIT, before its row count could be looked
// at, so a position that moved under this session must fail the statement,
// not merely change no row: count(*) is then 0, and the division by it
// aborts the transaction, and with it the COMMIT queued behind it.
const advanceSQL = `WITH advanced AS (
    UPDATE relay.capture SET applied_lsn = $1::text::pg_lsn, decoded_mode = $2, decoded_switch = $3, changed_at = now()
     WHERE applied_lsn = $4::text::pg_lsn
    RETURNING 1)
SELECT 1 / count(*)::int FROM advanced`

// wakeSQL wakes the sequencer if it sleeps: the appended events are news.
const wakeSQL = "SELECT pg_catalog.pg_notify('pgrelay_wake', '') FROM relay.sequencer WHERE idle"

// queueAppends queues the buffered rows' appends, opening the log
// transaction first if it is not open, and empties the buffer. It returns
// the statements' descriptions, for the errors, in queue order.
func (d *decoder) queueAppends(b *pgx.Batch, what []string) []string {
	if !d.open {
		b.Queue("BEGIN")
		what = append(what, "begin the log transaction")
	}
	for _, ch := range d.chunks {
		b.Queue(appendSQL, ch.topic, string(append(ch.rows, ']')))
		what = append(what, fmt.Sprintf("append %d events of topic %s", ch.n, ch.topic))
		d.written += ch.n
	}
	d.chunks, d.bytes = d.chunks[:0], 0
	return what
}

// send runs a queued pipeline in one round trip: the server runs its
// statements in order and skips the rest after the first that fails, so
// a failure leaves the log transaction aborted (the session then ends, and
// the connection with it).
func (d *decoder) send(ctx context.Context, b *pgx.Batch, what []string) error {
	br := d.conn.SendBatch(ctx, b)
	for _, w := range what {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			var pgErr *pgconn.PgError
			if w == advanceWhat && errors.As(err, &pgErr) && pgErr.Code == "22012" {
				return ErrFenced
			}
			return fmt.Errorf("%s: %w", w, err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("end the log pipeline: %w", err)
	}
	return nil
}

const advanceWhat = "record the captured position"

// write appends the buffered rows inside the log transaction, opening it:
// the rows of a source transaction larger than a batch, in pieces.
func (d *decoder) write(ctx context.Context) error {
	if len(d.chunks) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	what := d.queueAppends(b, nil)
	d.open = true
	return d.send(ctx, b, what)
}

// commit makes the received complete transactions durable in the log with
// their end LSN, then confirms that position to the server. It reports
// whether the slot was drained and dropped. The log transaction goes to
// the server as one pipeline (BEGIN, the appends, the position, the wake,
// COMMIT): one round trip, and one wake-up of its backend, per batch.
func (d *decoder) commit(ctx context.Context) (bool, error) {
	if !d.open && len(d.chunks) == 0 && d.switchID == d.storedSwitch {
		// Nothing to append (transactions of trigger mode, rows of no
		// topic): re-streaming them would append nothing either, so the
		// position is confirmed without a write.
		d.pending = false
		return false, d.status(ctx, d.done)
	}
	b := &pgx.Batch{}
	what := d.queueAppends(b, nil)
	d.open = true
	b.Queue(advanceSQL, d.done.String(), d.mode, d.switchID, d.applied.String())
	what = append(what, advanceWhat)
	rows := d.written
	d.lastBatch = rows
	if rows > 0 {
		b.Queue(wakeSQL)
		what = append(what, "wake the sequencer")
	}
	b.Queue("COMMIT")
	what = append(what, "commit the log transaction")
	err := d.send(ctx, b, what)
	if err != nil {
		return false, err
	}
	d.open, d.written = false, 0
	d.applied, d.storedMode, d.storedSwitch, d.pending = d.done, d.mode, d.switchID, false
	if rows > 0 {
		d.c.cfg.Observer.Appended(rows, d.commitAt)
		if d.c.cfg.Wake != nil {
			d.c.cfg.Wake()
		}
	}
	if hook := d.c.cfg.AfterCommit; hook != nil {
		if err := hook(d.applied); err != nil {
			return false, err
		}
	}
	if err := d.status(ctx, d.applied); err != nil {
		return false, err
	}
	if d.mode == "trigger" {
		var mode string
		if err := d.conn.QueryRow(ctx, "SELECT mode FROM relay.capture").Scan(&mode); err != nil {
			return false, fmt.Errorf("read the capture mode: %w", err)
		}
		if mode == "trigger" {
			// Drained, or (asked back to wal meanwhile) to be switched
			// again: the session loop decides on the state as it is
			// under its lock, with the slot released.
			d.rc.Close(ctx)
			return true, nil
		}
	}
	return false, nil
}

// status confirms the position to the server: lsn if it is ahead of what
// was confirmed and nothing received is still waiting for the log (a
// keepalive's WAL end qualifies then: every transaction that committed
// before it has been received).
func (d *decoder) status(ctx context.Context, lsn pglogrepl.LSN) error {
	if !d.inTx && !d.pending && len(d.chunks) == 0 && !d.open {
		if lsn > d.confirmed {
			d.confirmed = lsn
		}
		d.c.cfg.Observer.CaughtUp()
	}
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, d.rc, pglogrepl.StandbyStatusUpdate{WALWritePosition: d.confirmed}); err != nil {
		return fmt.Errorf("confirm the slot position: %w", err)
	}
	if !d.open && time.Since(d.lostChecked) >= d.c.cfg.StatusInterval {
		var lost bool
		if err := d.conn.QueryRow(ctx, "SELECT slot_lost_at IS NOT NULL FROM relay.capture").Scan(&lost); err != nil {
			return fmt.Errorf("read whether a slot loss is on record: %w", err)
		}
		d.c.cfg.Observer.SlotLost(lost)
		d.lostChecked = time.Now()
	}
	return nil
}

// ReplicationConnector returns a function opening logical replication
// sessions (replication=database) on url with the given application_name.
func ReplicationConnector(url, appName string) func(ctx context.Context) (*pgconn.PgConn, error) {
	return func(ctx context.Context) (*pgconn.PgConn, error) {
		cfg, err := pgconn.ParseConfig(url)
		if err != nil {
			return nil, fmt.Errorf("bad database URL: %w", err)
		}
		cfg.RuntimeParams["application_name"] = appName
		cfg.RuntimeParams["replication"] = "database"
		if cfg.ConnectTimeout == 0 {
			cfg.ConnectTimeout = 10 * time.Second
		}
		return pgconn.ConnectConfig(ctx, cfg)
	}
}
