// Package retention prunes pgrelay's event log by age and by length.
//
// Pruning deletes a prefix of the log, in (xid, id) order, in batches, each
// batch its own short transaction, so producers (who only ever append) are
// never blocked. It never deletes a position at or beyond the oldest running
// transaction (the snapshot xmin): such a transaction may still commit an
// event behind that position. In the same transaction as each delete it
// advances relay.retention's horizon to the newest deleted position, so a
// reader that sees the horizon also sees the log without those events, and a
// resume from before the horizon is answered with a reset.
//
// Exactly one relay prunes at a time: Run is meant to be the sequencer's
// duty (sequencer.Config.Duties).
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// DefaultBatch is how many events one delete removes: small enough that each
// transaction is short, large enough that pruning keeps up.
const DefaultBatch = 5000

// DB is what pruning runs on: a pool (each batch takes its own transaction).
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Result says what one Prune did.
type Result struct {
	// Deleted is how many events were removed.
	Deleted int64
	// Horizon is the retention horizon afterwards: every event at or before
	// it is gone.
	Horizon eventlog.ID
}

// sizeCutoffSQL finds the newest position that is beyond the newest $1
// settled events: everything at or before it may go to respect the cap.
const sizeCutoffSQL = `
SELECT xid, id FROM relay.events
 WHERE xid < relay.horizon()
 ORDER BY xid DESC, id DESC
OFFSET $1 LIMIT 1`

// pruneBatchSQL deletes the longest prefix of at most $2 settled events that
// are each older than $1 or at or before the size cutoff ($3, $4), and
// returns how many it deleted and the last of them.
//
// Only a prefix: the horizon then means "everything up to here is gone,
// everything after it is still there". An event that is too young stops the
// batch, even if older ones follow it in log order (a long transaction's).
const pruneBatchSQL = `
WITH head AS (
    SELECT xid, id, created_at
      FROM relay.events
     WHERE xid < relay.horizon()
     ORDER BY xid, id
     LIMIT $2
), marked AS (
    SELECT xid, id,
           bool_and(created_at < now() - $1::interval OR (xid, id) <= ($3::bigint, $4::bigint))
               OVER (ORDER BY xid, id) AS doomed
      FROM head
), deleted AS (
    DELETE FROM relay.events e
     USING marked m
     WHERE m.doomed AND e.xid = m.xid AND e.id = m.id
    RETURNING e.xid, e.id
)
SELECT count(*),
       coalesce(max(xid), 0),
       coalesce((array_agg(id ORDER BY xid DESC, id DESC))[1], 0)
  FROM deleted`

const advanceHorizonSQL = `
UPDATE relay.retention
   SET horizon_xid = $1, horizon_id = $2, pruned_at = now()
 WHERE (horizon_xid, horizon_id) < ($1, $2)`

// Prune deletes the events older than olderThan and, if maxEvents > 0, the
// oldest events beyond the newest maxEvents, batch events per transaction,
// until nothing more is due or ctx is done.
func Prune(ctx context.Context, db DB, olderThan time.Duration, maxEvents int64, batch int) (Result, error) {
	var res Result
	if batch <= 0 {
		batch = DefaultBatch
	}
	var sizeCutoff eventlog.ID
	if maxEvents > 0 {
		err := db.QueryRow(ctx, sizeCutoffSQL, maxEvents).Scan(&sizeCutoff.Xid, &sizeCutoff.Seq)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return res, fmt.Errorf("find the log's size cutoff (%d events): %w", maxEvents, err)
		}
	}
	for {
		n, err := pruneBatch(ctx, db, olderThan, sizeCutoff, batch)
		res.Deleted += n
		if err != nil {
			return res, err
		}
		if n < int64(batch) {
			break
		}
	}
	h, err := eventlog.Horizon(ctx, db)
	if err != nil {
		return res, err
	}
	res.Horizon = h
	return res, nil
}

// pruneBatch deletes one batch and advances the horizon, in one transaction.
func pruneBatch(ctx context.Context, db DB, olderThan time.Duration, sizeCutoff eventlog.ID, batch int) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var newest eventlog.ID
		if err := tx.QueryRow(ctx, pruneBatchSQL, olderThan, batch, sizeCutoff.Xid, sizeCutoff.Seq).
			Scan(&n, &newest.Xid, &newest.Seq); err != nil {
			return fmt.Errorf("delete events: %w", err)
		}
		if n == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, advanceHorizonSQL, newest.Xid, newest.Seq); err != nil {
			return fmt.Errorf("advance retention horizon to %s: %w", newest, err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune a batch of up to %d events: %w", batch, err)
	}
	return n, nil
}

// Options configure the pruning schedule.
type Options struct {
	// OlderThan is the age beyond which events are pruned.
	OlderThan time.Duration
	// MaxEvents caps the log's length (0: unlimited).
	MaxEvents int64
	// Interval is the time between prunes.
	Interval time.Duration
	// Batch is how many events one transaction deletes (default
	// DefaultBatch).
	Batch int
	// Pruned, if set, is told of every prune that deleted something.
	Pruned func(Result)
}

// Run prunes at once and then every Interval until ctx is done. A failed
// prune is logged and retried at the next interval: pruning late is harmless.
func Run(ctx context.Context, db DB, opts Options, log *slog.Logger) error {
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for {
		res, err := Prune(ctx, db, opts.OlderThan, opts.MaxEvents, opts.Batch)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			log.Warn("prune event log; retrying later", "err", err, "deleted", res.Deleted)
		case res.Deleted > 0:
			log.Info("pruned event log", "deleted", res.Deleted, "horizon", res.Horizon.String())
		}
		if res.Deleted > 0 && opts.Pruned != nil {
			opts.Pruned(res)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}
