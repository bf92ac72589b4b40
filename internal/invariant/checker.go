// Package invariant checks pgrelay's delivery guarantees end to end. A
// Checker records what every subscriber received and compares it with what
// SQL alone says it should have received: every committed matching event
// exactly once, in strictly increasing id order, with the row as committed,
// and nothing else — in particular nothing of another tenant. Client is a
// resilient SSE subscriber that reconnects with Last-Event-ID after any
// disconnect, as a browser's EventSource does, and feeds a Checker.
package invariant

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Delivery is one event as a subscriber received it.
type Delivery struct {
	ID    string
	Topic string
	Data  string
}

// Querier is what the checker reads the database through (a pool or a
// connection).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// received is a delivery as recorded: the data is kept as a digest of its
// canonical JSON, so long fault runs with large rows stay small in memory.
type received struct {
	id     string
	topic  string
	digest [sha256.Size]byte
	size   int
}

// Checker records deliveries per subscriber. It is safe for concurrent use.
type Checker struct {
	mu       sync.Mutex
	received map[string][]received
	resets   map[string]int
}

// New returns an empty Checker.
func New() *Checker {
	return &Checker{received: map[string][]received{}, resets: map[string]int{}}
}

// Record notes that subscriber received d.
func (c *Checker) Record(subscriber string, d Delivery) {
	r := received{id: d.ID, topic: d.Topic, digest: digest([]byte(d.Data)), size: len(d.Data)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.received[subscriber] = append(c.received[subscriber], r)
}

// RecordReset notes that subscriber was told to reload (event: reset): in
// the fault tests nothing is pruned, so any reset is a failure.
func (c *Checker) RecordReset(subscriber string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resets[subscriber]++
}

// ReceivedIDs returns the ids subscriber received so far, in order.
func (c *Checker) ReceivedIDs(subscriber string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, len(c.received[subscriber]))
	for i, r := range c.received[subscriber] {
		ids[i] = r.id
	}
	return ids
}

func (c *Checker) receivedBy(subscriber string) []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.received[subscriber])
}

// Total returns the number of deliveries recorded for every subscriber.
func (c *Checker) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ds := range c.received {
		n += len(ds)
	}
	return n
}

// expected is one event a subscriber should receive, from the log.
type expected struct {
	id      string
	topic   string
	payload json.RawMessage
}

// expectedSQL lists, from relay.events and relay.filters alone, the events a
// subscriber should receive, in delivery order. It is the relay's rule
// written independently of the relay: the subscriber's keys meet the
// event's audience and the subscriber is not its actor. relay.events holds
// committed rows only, so a failed or rolled-back insert is never expected.
const expectedSQL = `
WITH keys AS MATERIALIZED (
    SELECT topic, key FROM relay.filters(ARRAY[$1]::text[]) WHERE key IS NOT NULL
)
SELECT e.xid, e.id, e.topic, e.payload::text
  FROM relay.events e
 WHERE e.actor IS DISTINCT FROM $1
   AND EXISTS (SELECT 1 FROM keys k WHERE k.topic = e.topic AND k.key = ANY (e.audience))
 ORDER BY e.xid, e.id`

// templateRuleSQL is the same for the templates topic, from the sharing
// rules (relay.template_recipients) rather than from filters: the two must
// agree, or the checker itself would be testing the wrong thing.
const templateRuleSQL = `
SELECT e.xid, e.id
  FROM relay.events e
 WHERE e.topic = 'templates'
   AND $1 IN (SELECT relay.template_recipients(e.payload->>'id'))
 ORDER BY e.xid, e.id`

// crossTenantSQL finds delivered templates that involve none of the
// receiving user's organisation: created in another org and shared with no
// location of the user's org. No rule may ever deliver those.
const crossTenantSQL = `
SELECT t.id
  FROM unnest($2::text[]) AS d(eid)
  JOIN relay.events e ON e.topic = 'templates'
                     AND lpad(to_hex(e.xid), 16, '0') || '-' || lpad(to_hex(e.id), 16, '0') = d.eid
  JOIN public.templates t ON t.id = e.payload->>'id'
  JOIN public.users u ON u.id = $1
  JOIN public.users c ON c.id = t.created_by
 WHERE c.org_id <> u.org_id
   AND NOT EXISTS (SELECT 1 FROM public.locations l
                    WHERE l.id = ANY (t.share_location_ids) AND l.org_id = u.org_id)`

// idString formats a log position as the relay does: fixed-width hex, so
// string order is event order. Kept here rather than imported so that the
// checker does not trust the code it checks.
func idString(xid, seq int64) string { return fmt.Sprintf("%016x-%016x", uint64(xid), uint64(seq)) }

func (c *Checker) expectedFor(ctx context.Context, q Querier, subscriber string) ([]expected, error) {
	rows, err := q.Query(ctx, expectedSQL, subscriber)
	if err != nil {
		return nil, fmt.Errorf("expected events of %s: %w", subscriber, err)
	}
	var out []expected
	for rows.Next() {
		var xid, seq int64
		var e expected
		var payload string
		if err := rows.Scan(&xid, &seq, &e.topic, &payload); err != nil {
			rows.Close()
			return nil, fmt.Errorf("expected events of %s: %w", subscriber, err)
		}
		e.id, e.payload = idString(xid, seq), json.RawMessage(payload)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("expected events of %s: %w", subscriber, err)
	}
	return out, nil
}

func (c *Checker) templateRuleFor(ctx context.Context, q Querier, subscriber string) ([]string, error) {
	rows, err := q.Query(ctx, templateRuleSQL, subscriber)
	if err != nil {
		return nil, fmt.Errorf("template recipients rule for %s: %w", subscriber, err)
	}
	ids, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var xid, seq int64
		err := r.Scan(&xid, &seq)
		return idString(xid, seq), err
	})
	if err != nil {
		return nil, fmt.Errorf("template recipients rule for %s: %w", subscriber, err)
	}
	return ids, nil
}

// Complete reports whether every subscriber has received (at least once)
// every event SQL says it should, as a cheap condition to wait on.
func (c *Checker) Complete(ctx context.Context, q Querier, subscribers []string) (bool, error) {
	for _, sub := range subscribers {
		want, err := c.expectedFor(ctx, q, sub)
		if err != nil {
			return false, err
		}
		got := map[string]bool{}
		for _, id := range c.ReceivedIDs(sub) {
			got[id] = true
		}
		for _, e := range want {
			if !got[e.id] {
				return false, nil
			}
		}
	}
	return true, nil
}

// WaitComplete polls Complete until it holds or timeout passes; it returns
// whether it held.
func (c *Checker) WaitComplete(ctx context.Context, q Querier, subscribers []string, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := c.Complete(ctx, q, subscribers)
		if ok {
			return true, nil
		}
		// An error is retried until the deadline: a fault test may still be
		// waiting for the database to come back.
		if time.Now().After(deadline) {
			return false, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Report is the outcome of a check. Delivered counts every delivery
// recorded; the failure counts are per (subscriber, event).
type Report struct {
	Subscribers  int
	Produced     int // committed events in the log
	Expected     int // (subscriber, event) pairs SQL says must be delivered
	Delivered    int // deliveries recorded
	Lost         int // expected and never delivered
	Duplicated   int // extra copies of an event delivered more than once
	Misdelivered int // delivered but not expected (filter does not match, own event, or not in the log)
	OutOfOrder   int // deliveries whose id is not greater than the one before
	Corrupted    int // expected events delivered with another topic or row
	CrossTenant  int // templates delivered to a user of an org they do not involve
	Resets       int // event: reset received (nothing is pruned in these tests)
	RuleMismatch int // subscribers for whom relay.filters and relay.template_recipients disagree
	// Problems describes the first failures, for the test log.
	Problems []string
}

// OK reports whether every guarantee held.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Duplicated == 0 && r.Misdelivered == 0 && r.OutOfOrder == 0 &&
		r.Corrupted == 0 && r.CrossTenant == 0 && r.Resets == 0 && r.RuleMismatch == 0
}

// String is the one-line summary fault tests log.
func (r Report) String() string {
	s := fmt.Sprintf("subscribers=%d produced=%d expected=%d delivered=%d lost=%d duplicated=%d misdelivered=%d out_of_order=%d corrupted=%d cross_tenant=%d resets=%d rule_mismatch=%d",
		r.Subscribers, r.Produced, r.Expected, r.Delivered, r.Lost, r.Duplicated, r.Misdelivered,
		r.OutOfOrder, r.Corrupted, r.CrossTenant, r.Resets, r.RuleMismatch)
	if len(r.Problems) > 0 {
		s += "\n  " + strings.Join(r.Problems, "\n  ")
	}
	return s
}

// maxProblems bounds the failures described in a report.
const maxProblems = 20

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Check compares what each subscriber received with what it should have
// received. Call it once every client has stopped.
func (c *Checker) Check(ctx context.Context, q Querier, subscribers []string) (Report, error) {
	var r Report
	r.Subscribers = len(subscribers)
	rows, err := q.Query(ctx, `SELECT count(*) FROM relay.events`)
	if err != nil {
		return r, fmt.Errorf("count events: %w", err)
	}
	counts, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return r, fmt.Errorf("count events: %w", err)
	}
	r.Produced = int(counts[0])
	c.mu.Lock()
	for _, n := range c.resets {
		r.Resets += n
	}
	c.mu.Unlock()
	for _, sub := range subscribers {
		if err := c.checkOne(ctx, q, sub, &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

func (c *Checker) checkOne(ctx context.Context, q Querier, sub string, r *Report) error {
	want, err := c.expectedFor(ctx, q, sub)
	if err != nil {
		return err
	}
	rule, err := c.templateRuleFor(ctx, q, sub)
	if err != nil {
		return err
	}
	var fromFilters []string
	byID := make(map[string]expected, len(want))
	for _, e := range want {
		byID[e.id] = e
		if e.topic == "templates" {
			fromFilters = append(fromFilters, e.id)
		}
	}
	if !slices.Equal(fromFilters, rule) {
		r.RuleMismatch++
		r.problem("%s: relay.filters expects %d templates, relay.template_recipients %d", sub, len(fromFilters), len(rule))
	}
	got := c.receivedBy(sub)
	r.Expected += len(want)
	r.Delivered += len(got)
	seen := map[string]int{}
	var delivered []string
	for i, d := range got {
		seen[d.id]++
		if seen[d.id] > 1 {
			r.Duplicated++
			r.problem("%s: event %s delivered %d times", sub, d.id, seen[d.id])
			continue
		}
		delivered = append(delivered, d.id)
		if i > 0 && d.id <= got[i-1].id {
			r.OutOfOrder++
			r.problem("%s: event %s delivered after %s", sub, d.id, got[i-1].id)
		}
		e, ok := byID[d.id]
		if !ok {
			r.Misdelivered++
			r.problem("%s: received %s (%s), which it should not receive", sub, d.id, d.topic)
		} else if d.topic != e.topic || d.digest != digest(e.payload) {
			r.Corrupted++
			r.problem("%s: event %s arrived as %s with %d bytes, the log has %s with %d bytes", sub, d.id, d.topic, d.size, e.topic, len(e.payload))
		}
	}
	for _, e := range want {
		if seen[e.id] == 0 {
			r.Lost++
			r.problem("%s: never received %s", sub, e.id)
		}
	}
	return c.checkTenancy(ctx, q, sub, delivered, r)
}

// checkTenancy looks at every delivered template, expected or not: a rule
// that let one tenant see another's rows would make SQL expect the leak,
// so tenancy is checked on its own terms.
func (c *Checker) checkTenancy(ctx context.Context, q Querier, sub string, ids []string, r *Report) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := q.Query(ctx, crossTenantSQL, sub, ids)
	if err != nil {
		return fmt.Errorf("check tenancy of %s's deliveries: %w", sub, err)
	}
	foreign, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("check tenancy of %s's deliveries: %w", sub, err)
	}
	for _, id := range foreign {
		r.CrossTenant++
		r.problem("%s: received template %s of another organisation", sub, id)
	}
	return nil
}

// digest hashes a JSON value's canonical form (object keys sorted, numbers
// as written), so the same row compares equal whatever its spacing or key
// order. Text that is not JSON is hashed as it is: it then matches nothing
// the log holds.
func digest(data []byte) [sha256.Size]byte {
	var v any
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&v); err == nil {
		if canonical, err := json.Marshal(v); err == nil {
			return sha256.Sum256(canonical)
		}
	}
	return sha256.Sum256(append([]byte("not json:"), data...))
}
