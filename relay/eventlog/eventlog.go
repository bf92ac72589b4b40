// Package eventlog reads pgrelay's durable event log (relay.events).
//
// Events are ordered by (xid, seq): the id of the transaction that wrote the
// event, then the order of insertion. Reads only return events whose xid is
// below the oldest transaction still running (the xmin of the current
// snapshot). Every transaction below that point has ended, so no event can
// later become visible at a position a reader has already passed: "everything
// after ID" never misses a row that committed late.
package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ID is an event's position in the log. The zero ID comes before every event.
type ID struct {
	Xid int64 // the writing transaction
	Seq int64 // relay.events.id: order within the log
}

// idLen is the length of an ID's string form: 16 hex digits, '-', 16 hex digits.
const idLen = 33

// ErrBadID reports a malformed event id.
var ErrBadID = errors.New("malformed event id")

// String returns the opaque form clients see. Fixed-width hex, so string order
// is event order.
func (id ID) String() string {
	var b [idLen]byte
	putHex(b[:16], uint64(id.Xid))
	b[16] = '-'
	putHex(b[17:], uint64(id.Seq))
	return string(b[:])
}

func putHex(dst []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = digits[v&0xf]
		v >>= 4
	}
}

// ParseID parses the string form of an ID. Only the form String produces is
// accepted (lower-case digits), so every ID has exactly one string and ids
// compare equal as strings exactly when they are equal.
func ParseID(s string) (ID, error) {
	if len(s) != idLen || s[16] != '-' || !lowerHex(s[:16]) || !lowerHex(s[17:]) {
		return ID{}, fmt.Errorf("%w: %q: want 16 hex digits, '-', 16 hex digits", ErrBadID, truncate(s))
	}
	xid, err1 := strconv.ParseUint(s[:16], 16, 64)
	seq, err2 := strconv.ParseUint(s[17:], 16, 64)
	if err1 != nil || err2 != nil || xid > 1<<63-1 || seq > 1<<63-1 {
		return ID{}, fmt.Errorf("%w: %q: want 16 hex digits, '-', 16 hex digits", ErrBadID, truncate(s))
	}
	return ID{Xid: int64(xid), Seq: int64(seq)}, nil
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// Compare returns -1, 0 or +1 as id is before, equal to or after other.
func (id ID) Compare(other ID) int {
	switch {
	case id.Xid < other.Xid:
		return -1
	case id.Xid > other.Xid:
		return 1
	case id.Seq < other.Seq:
		return -1
	case id.Seq > other.Seq:
		return 1
	}
	return 0
}

// Less reports whether id comes before other.
func (id ID) Less(other ID) bool { return id.Compare(other) < 0 }

// IsZero reports whether id is the position before every event.
func (id ID) IsZero() bool { return id == ID{} }

// Event is one row of the log.
type Event struct {
	ID        ID
	Topic     string
	Payload   json.RawMessage // the published row as a JSON object
	Audience  []string        // keys the event is addressed to
	Actor     string          // subscriber who wrote it ("" if none); never a recipient
	CreatedAt time.Time       // when the row was inserted (the producer's clock_timestamp)
}

// ResetTopic is the topic of a reset marker: a row of the log that belongs
// to no topic's table and says the log has a gap at its position (capture
// mode wal lost its replication slot, so rows committed around it never
// reached the log; relay.capture_slot_lost writes it). Every stream that
// passes it, live or replayed, whatever its topics, is sent a reset there.
// No topic can have this name (topics are [a-z][a-z0-9_]*).
const ResetTopic = "pgrelay.reset"

// IsReset reports whether e is a reset marker.
func (e *Event) IsReset() bool { return e.Topic == ResetTopic }

// Querier is what the log is read through: a pool, a connection or a
// transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

const readAfterSQL = `
SELECT xid, id, topic, payload, audience, coalesce(actor, ''), created_at
  FROM relay.events
 WHERE (xid, id) > ($1, $2)
   AND xid < relay.horizon($4)
 ORDER BY xid, id
 LIMIT $3`

// ReadAfter returns up to limit events after position after, in order. It
// only returns events of ended transactions, so the last one returned is a
// safe position to continue from.
func ReadAfter(ctx context.Context, q Querier, after ID, limit int) ([]Event, error) {
	return readAfter(ctx, q, after, limit, nil)
}

func readAfter(ctx context.Context, q Querier, after ID, limit int, foreign []int64) ([]Event, error) {
	return query(ctx, q, fmt.Sprintf("read events after %s", after), readAfterSQL, after.Xid, after.Seq, limit, foreign)
}

const readBetweenSQL = `
SELECT xid, id, topic, payload, audience, coalesce(actor, ''), created_at
  FROM relay.events
 WHERE (xid, id) > ($1, $2) AND (xid, id) <= ($3, $4)
 ORDER BY xid, id
 LIMIT $5`

// ReadBetween returns up to limit events in (after, upto], every topic, in
// order. upto must be settled: returned by a read below the horizon, or
// announced by the sequencer, which read it so.
func ReadBetween(ctx context.Context, q Querier, after, upto ID, limit int) ([]Event, error) {
	return query(ctx, q, fmt.Sprintf("read events in (%s, %s]", after, upto), readBetweenSQL,
		after.Xid, after.Seq, upto.Xid, upto.Seq, limit)
}

// Batch bounds one read: at most Events events, and no more once their rows
// reach Bytes (0: no byte bound), so that a read holds a bounded amount of
// memory whatever the rows' sizes. A read still returns one event, however
// large, if there is one.
type Batch struct {
	Events, Bytes int
}

// ReadBetweenBatch is ReadBetween bounded by b. It reports full when it
// stopped at a bound: there may be more events in the range.
func ReadBetweenBatch(ctx context.Context, q Querier, after, upto ID, b Batch) ([]Event, bool, error) {
	return queryBatch(ctx, q, fmt.Sprintf("read events in (%s, %s]", after, upto), b, readBetweenSQL,
		after.Xid, after.Seq, upto.Xid, upto.Seq, b.Events)
}

const readRangeSQL = `
SELECT xid, id, topic, payload, audience, coalesce(actor, ''), created_at
  FROM relay.events
 WHERE (xid, id) > ($1, $2)
   AND (xid, id) <= ($3, $4)
   AND ((topic = ANY ($5) AND audience && $6 AND actor IS DISTINCT FROM $7)
        OR topic = 'pgrelay.reset')
 ORDER BY xid, id
 LIMIT $8`

// Selector narrows a range read to what one subscriber may receive. The
// database applies it coarsely (any key of any topic); callers still match
// each event exactly.
type Selector struct {
	Topics     []string
	Keys       []string
	Subscriber string
}

// ReadRange returns the events in (after, upto] that pass sel, and every
// reset marker among them (whatever sel says), in order: at
// most limit of them, and no more once their payloads reach maxBytes (0: no
// byte bound), so that one read holds a bounded amount of memory whatever
// the rows' sizes. It returns at least one event if there is one, however
// large. upto must be a position already returned by ReadAfter, so that the
// range is settled. The read uses a cursor, which needs tx to be a
// transaction.
//
// It reports full when it stopped at one of the bounds (there may be more
// events in the range), false when it read the range to its end.
func ReadRange(ctx context.Context, tx pgx.Tx, after, upto ID, sel Selector, limit, maxBytes int) (events []Event, full bool, err error) {
	events, full, err = readRange(ctx, tx, after, upto, sel, limit, maxBytes)
	if err != nil {
		return nil, false, fmt.Errorf("read events in (%s, %s]: %w", after, upto, err)
	}
	return events, full, nil
}

// firstFetch is how many rows the first fetch of a range read asks for;
// later fetches ask for as many as the rows seen so far suggest still fit
// the byte bound. Rows fetched beyond the bound are read and dropped, so a
// small first fetch keeps that waste small when rows are large, at the cost
// of one more round trip when they are small.
const firstFetch = 16

func readRange(ctx context.Context, tx pgx.Tx, after, upto ID, sel Selector, limit, maxBytes int) ([]Event, bool, error) {
	if limit < 1 {
		return nil, false, nil // FETCH 0 would mean the current row again
	}
	if _, err := tx.Exec(ctx, "DECLARE pgrelay_range NO SCROLL CURSOR FOR "+readRangeSQL,
		after.Xid, after.Seq, upto.Xid, upto.Seq, sel.Topics, sel.Keys, sel.Subscriber, limit); err != nil {
		return nil, false, err
	}
	var events []Event
	bytes := 0
	full := func() bool { return len(events) >= limit || (maxBytes > 0 && bytes >= maxBytes) }
	for n := min(firstFetch, limit); ; {
		// n is a whole number the relay computed; FETCH takes no parameter.
		rows, err := tx.Query(ctx, "FETCH FORWARD "+strconv.Itoa(n)+" FROM pgrelay_range")
		if err != nil {
			return nil, false, err
		}
		got := 0
		for rows.Next() {
			got++
			if full() {
				continue // over the bound: read, not kept
			}
			e, err := scanEvent(rows)
			if err != nil {
				rows.Close()
				return nil, false, err
			}
			events = append(events, e)
			bytes += len(e.Payload)
		}
		if err := rows.Err(); err != nil {
			return nil, false, err
		}
		if full() || got < n {
			if _, err := tx.Exec(ctx, "CLOSE pgrelay_range"); err != nil {
				return nil, false, err
			}
			return events, full(), nil
		}
		n = limit - len(events)
		if maxBytes > 0 {
			perRow := max(bytes/len(events), 1)
			n = min(n, (maxBytes-bytes)/perRow+1)
		}
	}
}

// query runs a read of whole events; what names it in errors.
func query(ctx context.Context, q Querier, what, sql string, args ...any) ([]Event, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	events, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return events, nil
}

// queryBatch reads events with sql, stopping at b's bounds. Rows past the
// byte bound that the server already sent are read and dropped as the
// result is closed, never kept.
func queryBatch(ctx context.Context, q Querier, what string, b Batch, sql string, args ...any) ([]Event, bool, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var events []Event
	bytes := 0
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", what, err)
		}
		events = append(events, e)
		bytes += len(e.Payload)
		if b.Bytes > 0 && bytes >= b.Bytes {
			return events, true, nil
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	return events, len(events) >= b.Events, nil
}

func collect(rows pgx.Rows) ([]Event, error) {
	var events []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		events = append(events, e)
	}
	return events, rows.Err()
}

// scanEvent reads the row rows is on, in the column order of the reads.
func scanEvent(rows pgx.Rows) (Event, error) {
	var e Event
	var payload []byte
	if err := rows.Scan(&e.ID.Xid, &e.ID.Seq, &e.Topic, &payload, &e.Audience, &e.Actor, &e.CreatedAt); err != nil {
		return Event{}, err
	}
	e.Payload = payload
	return e, nil
}

// Tail returns the position of the newest settled event (the zero ID for an
// empty log): a new subscriber without a resume id starts after it.
func Tail(ctx context.Context, q Querier) (ID, error) {
	return tail(ctx, q, nil)
}

func tail(ctx context.Context, q Querier, foreign []int64) (ID, error) {
	var id ID
	err := q.QueryRow(ctx, `
SELECT xid, id FROM relay.events
 WHERE xid < relay.horizon($1)
 ORDER BY xid DESC, id DESC LIMIT 1`, foreign).Scan(&id.Xid, &id.Seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return Horizon(ctx, q)
	}
	if err != nil {
		return ID{}, fmt.Errorf("read log tail: %w", err)
	}
	return id, nil
}

// Horizon returns the newest pruned position: events at or before it are
// gone, and a resume from before it cannot be served.
func Horizon(ctx context.Context, q Querier) (ID, error) {
	var id ID
	err := q.QueryRow(ctx, `SELECT horizon_xid, horizon_id FROM relay.retention`).Scan(&id.Xid, &id.Seq)
	if err != nil {
		return ID{}, fmt.Errorf("read retention horizon: %w", err)
	}
	return id, nil
}

// Reader reads the log like ReadAfter and Tail for a relay that reads it
// hundreds of times a second. Finding the transactions that belong to other
// databases (relay.foreign_xids) costs more than the read itself, so Reader
// remembers them for up to maxAge. A remembered list is never wrong, since a
// transaction never changes database; it only misses foreign transactions
// begun since, which hold the horizon back until the next refresh.
type Reader struct {
	maxAge time.Duration

	mu      sync.Mutex
	foreign []int64
	fetched time.Time
}

// ForeignListAge is how long readers remember the list of other databases'
// transactions by default: a few hundred milliseconds keep the lookup off
// most reads, and a foreign transaction begun since delays delivery by at
// most that much.
const ForeignListAge = 250 * time.Millisecond

// NewReader returns a Reader that refreshes its list of foreign transactions
// at most every maxAge.
func NewReader(maxAge time.Duration) *Reader {
	return &Reader{maxAge: maxAge}
}

// foreignXIDs returns the remembered list, refreshing it through q when it is
// older than maxAge.
func (r *Reader) foreignXIDs(ctx context.Context, q Querier) ([]int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.foreign != nil && time.Since(r.fetched) < r.maxAge {
		return r.foreign, nil
	}
	var xids []int64
	if err := q.QueryRow(ctx, `SELECT relay.foreign_xids()`).Scan(&xids); err != nil {
		return nil, fmt.Errorf("list transactions of other databases: %w", err)
	}
	if xids == nil {
		xids = []int64{}
	}
	r.foreign, r.fetched = xids, time.Now()
	return xids, nil
}

// Forget drops the remembered list: the next read looks it up afresh.
func (r *Reader) Forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.foreign = nil
}

// ReadAfter is ReadAfter with the remembered list of foreign transactions.
func (r *Reader) ReadAfter(ctx context.Context, q Querier, after ID, limit int) ([]Event, error) {
	foreign, err := r.foreignXIDs(ctx, q)
	if err != nil {
		return nil, err
	}
	return readAfter(ctx, q, after, limit, foreign)
}

// ReadAfterBatch is ReadAfter bounded by b. It reports full when it stopped
// at a bound: there may be more settled events.
func (r *Reader) ReadAfterBatch(ctx context.Context, q Querier, after ID, b Batch) ([]Event, bool, error) {
	foreign, err := r.foreignXIDs(ctx, q)
	if err != nil {
		return nil, false, err
	}
	return queryBatch(ctx, q, fmt.Sprintf("read events after %s", after), b, readAfterSQL, after.Xid, after.Seq, b.Events, foreign)
}

// Newest returns the newest settled position after after, and false if there
// is none: what the sequencer polls for.
func (r *Reader) Newest(ctx context.Context, q Querier, after ID) (ID, bool, error) {
	foreign, err := r.foreignXIDs(ctx, q)
	if err != nil {
		return ID{}, false, err
	}
	var id ID
	err = q.QueryRow(ctx, `
SELECT xid, id FROM relay.events
 WHERE (xid, id) > ($1, $2)
   AND xid < relay.horizon($3)
 ORDER BY xid DESC, id DESC
 LIMIT 1`, after.Xid, after.Seq, foreign).Scan(&id.Xid, &id.Seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return ID{}, false, nil
	}
	if err != nil {
		return ID{}, false, fmt.Errorf("poll the log after %s: %w", after, err)
	}
	return id, true, nil
}
