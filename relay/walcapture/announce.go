package walcapture

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// announceLimit is the most events a log transaction announces itself, as
// the sequencer does per poll: a larger batch is left to the sequencer,
// which announces it by position.
const announceLimit = 64

// noteXidSQL keeps the log transaction's xid in the session, for the reads
// that follow its COMMIT in the same pipeline.
const noteXidSQL = "SELECT pg_catalog.set_config('pgrelay.log_xid', pg_catalog.pg_current_xact_id()::text, false)"

// settledSQL, run after the log transaction committed, says whether every
// transaction below it that could write the log had ended when this
// statement's snapshot was taken (relay.horizon, the same horizon every
// reader applies), and gives the newest event below it in that snapshot.
// Then the log transaction's events are the next ones of the log for good,
// and follow that position: no transaction that begins later can take a
// smaller xid. The snapshot is taken after the commit, so it is not one
// PostgreSQL reuses from before (it does while no transaction ends), and
// its xmax is past the log transaction's xid; inside the transaction, a
// snapshot cannot tell the transactions that took their xids after the
// newest one that had ended, and before this one, from ended ones. An
// empty log below it follows the pruned position, where relays that read
// an empty log stand.
const settledSQL = `
SELECT relay.horizon($1) > x.mine, coalesce(p.xid, r.horizon_xid), coalesce(p.id, r.horizon_id)
  FROM (SELECT pg_catalog.current_setting('pgrelay.log_xid')::bigint AS mine) x
 CROSS JOIN relay.retention r
  LEFT JOIN LATERAL (SELECT e.xid, e.id FROM relay.events e
                      WHERE e.xid < x.mine
                      ORDER BY e.xid DESC, e.id DESC LIMIT 1) p ON true`

// ownEventsSQL reads the events of the log transaction that committed last.
const ownEventsSQL = `
SELECT xid, id, topic, payload, audience, coalesce(actor, ''), created_at
  FROM relay.events
 WHERE xid = pg_catalog.current_setting('pgrelay.log_xid')::bigint
 ORDER BY id
 LIMIT $1`

// announceSQL sends one announcement.
const announceSQL = "SELECT pg_catalog.pg_notify($1, $2)"

// announcement is what a log transaction's session announces of its
// events once it committed.
type announcement struct {
	prev, upto eventlog.ID
	payloads   []string // sealed; none: the sequencer announces them
}

// commitAndReadBack sends the log transaction b, whose last statements
// note its xid and commit it, with the reads of settledSQL and
// ownEventsSQL queued after the COMMIT: one round trip. If its events are
// settled it returns their announcements, sealed for this session, which
// are exactly what the sequencer would announce after its next poll.
// Otherwise (a write transaction of the relay's role or the owner open
// below it, or a switch back to triggers pending while producers'
// transactions run) it returns none, and the sequencer announces the
// events once the horizon has passed them, as for any other.
func (d *decoder) commitAndReadBack(ctx context.Context, b *pgx.Batch, what []string, rows int) (announcement, error) {
	var a announcement
	foreign, err := d.c.cfg.Horizon.ForeignXIDs(ctx, d.conn)
	if err != nil {
		return a, err
	}
	b.Queue(settledSQL, foreign)
	b.Queue(ownEventsSQL, rows+1)
	br := d.conn.SendBatch(ctx, b)
	defer br.Close()
	if err := execAll(br, what); err != nil {
		return a, err
	}
	var settled bool
	if err := br.QueryRow().Scan(&settled, &a.prev.Xid, &a.prev.Seq); err != nil {
		return a, fmt.Errorf("read whether the appended events are settled: %w", err)
	}
	r, err := br.Query()
	if err != nil {
		return a, fmt.Errorf("read the appended events back: %w", err)
	}
	events, err := eventlog.CollectEvents(r)
	if err != nil {
		return a, fmt.Errorf("read the appended events back: %w", err)
	}
	if err := br.Close(); err != nil {
		return a, fmt.Errorf("end the log pipeline: %w", err)
	}
	if !settled || len(events) != rows {
		return a, nil
	}
	a.upto = events[len(events)-1].ID
	plain, err := eventlog.EncodeAnnouncements(a.prev, events, a.upto)
	if err != nil {
		return a, err
	}
	pid := d.conn.PgConn().PID()
	for _, p := range plain {
		a.payloads = append(a.payloads, d.c.cfg.Announce.Seal(eventlog.AnnounceChannel, pid, []byte(p)))
	}
	return a, nil
}

// announce sends a's announcements, or wakes the sequencer if there are
// none, in a transaction of their own that does not wait for its WAL
// flush: nothing in it needs to survive a crash (the events are durable
// already; a lost announcement is made up by the relays' reads: after a
// listener reconnects, and the safety poll), and a flush would stand
// between every event and its relays. If it fails, the session ends; the
// sequencer, told that the events are announced, does not announce them
// again, and relays read them at their next safety poll at the latest.
func (d *decoder) announce(ctx context.Context, a announcement) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	what := []string{"begin the announcement", "announce without a flush"}
	for _, p := range a.payloads {
		b.Queue(announceSQL, eventlog.AnnounceChannel, p)
		what = append(what, "announce the appended events")
	}
	if len(a.payloads) == 0 {
		b.Queue(wakeSQL)
		what = append(what, "wake the sequencer")
	}
	b.Queue("COMMIT")
	what = append(what, "commit the announcement")
	err := d.send(ctx, b, what)
	if len(a.payloads) == 0 && d.c.cfg.Wake != nil {
		d.c.cfg.Wake()
	}
	return err
}
