// Package filter loads what subscribers listen to from the database
// (relay.filters) and keeps connected subscribers' filters current when the
// rows they depend on change.
package filter

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/relay/match"
)

// Filter is what one subscriber listens to.
type Filter struct {
	// Exists is false for an id that is not a subscriber (the token's sub
	// names nobody, or the subscriber was deleted).
	Exists bool
	Keys   match.Keys
}

// Querier runs the filter queries: a pool or a connection.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Load returns the filters of the given subscribers. Every id asked for has
// an entry; ids that are not subscribers have Exists false.
func Load(ctx context.Context, q Querier, subscribers []string) (map[string]Filter, error) {
	out := make(map[string]Filter, len(subscribers))
	storable := make([]string, 0, len(subscribers))
	for _, id := range subscribers {
		out[id] = Filter{}
		// PostgreSQL refuses the whole array for one such id, failing every
		// other subscriber loaded with it; no row can have it as its key.
		if Storable(id) {
			storable = append(storable, id)
		}
	}
	if len(storable) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT subscriber, topic, key FROM relay.filters($1)`, storable)
	if err != nil {
		return nil, fmt.Errorf("load filters of %d subscribers: %w", len(subscribers), err)
	}
	defer rows.Close()
	for rows.Next() {
		var sub string
		var topic, key *string
		if err := rows.Scan(&sub, &topic, &key); err != nil {
			return nil, fmt.Errorf("load filters: %w", err)
		}
		f := out[sub]
		if topic == nil {
			f.Exists = true
		} else if key != nil {
			if f.Keys == nil {
				f.Keys = match.Keys{}
			}
			f.Keys[*topic] = append(f.Keys[*topic], *key)
		}
		out[sub] = f
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load filters: %w", err)
	}
	return out, nil
}

// Storable reports whether PostgreSQL can hold id as text: valid UTF-8
// without NUL characters.
func Storable(id string) bool {
	return utf8.ValidString(id) && !strings.ContainsRune(id, 0)
}

// Topics returns the names of the registered topics, sorted.
func Topics(ctx context.Context, q Querier) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT topic FROM relay.topics ORDER BY topic`)
	if err != nil {
		return nil, fmt.Errorf("load topics: %w", err)
	}
	topics, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("load topics: %w", err)
	}
	return topics, nil
}

// ChangeChannel is the channel relay.filters_changed notifies on.
const ChangeChannel = "pgrelay_filters"

// Change is a decoded control notification: whose filters may have changed.
type Change struct {
	All         bool
	Subscribers []string
}

// ParseChange decodes the payload of a pgrelay_filters notification. A
// payload it cannot read means "everyone", which is always safe — and so
// does one that names no subscribers array ({}, null, a misspelt key): read
// as "nobody", it would leave filters stale until the next full resync.
func ParseChange(payload string) Change {
	var c struct {
		All         bool      `json:"all"`
		Subscribers *[]string `json:"subscribers"`
	}
	if err := json.Unmarshal([]byte(payload), &c); err != nil || c.All || c.Subscribers == nil || *c.Subscribers == nil {
		return Change{All: true}
	}
	return Change{Subscribers: *c.Subscribers}
}

// Target is where refreshed filters go: the hub of connected subscribers.
type Target interface {
	// Connected returns the ids of the subscribers connected now.
	Connected() []string
	// NextGeneration returns a number larger than any before it, taken
	// before a load so that a newer load always wins over an older one.
	NextGeneration() uint64
	// ApplyFilters installs filters loaded at generation gen.
	ApplyFilters(gen uint64, filters map[string]Filter)
}

// Refresher reloads the filters of connected subscribers when told they
// changed, and all of them periodically in case a notification was missed.
type Refresher struct {
	q        Querier
	target   Target
	log      *slog.Logger
	changes  chan Change
	resync   time.Duration
	debounce time.Duration
	batch    int

	reloads, reloaded atomic.Uint64
}

// Reloads counts the reloads that found subscribers to reload.
func (r *Refresher) Reloads() uint64 { return r.reloads.Load() }

// ReloadedSubscribers counts the subscriber filters reloaded.
func (r *Refresher) ReloadedSubscribers() uint64 { return r.reloaded.Load() }

// NewRefresher returns a Refresher loading through q into target, with a full
// resync every resync interval.
func NewRefresher(q Querier, target Target, log *slog.Logger, resync time.Duration) *Refresher {
	return &Refresher{
		q: q, target: target, log: log,
		changes:  make(chan Change, 256),
		resync:   resync,
		debounce: 10 * time.Millisecond,
		batch:    1000,
	}
}

// Notify queues a change. It never blocks: when the queue is full the change
// is widened to everyone.
func (r *Refresher) Notify(c Change) {
	select {
	case r.changes <- c:
	default:
		select {
		case r.changes <- Change{All: true}:
		default:
			// Queue full of pending changes: the next reload drains them
			// all and a full resync follows within the resync interval.
		}
	}
}

// Run applies changes until ctx is done.
func (r *Refresher) Run(ctx context.Context) error {
	ticker := time.NewTicker(r.resync)
	defer ticker.Stop()
	for {
		var pending Change
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			pending.All = true
		case c := <-r.changes:
			pending = c
		}
		// Gather what arrives shortly after, so a burst costs one reload.
		timer := time.NewTimer(r.debounce)
	gather:
		for {
			select {
			case c := <-r.changes:
				pending = merge(pending, c)
			case <-timer.C:
				break gather
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
		}
		if err := r.reload(ctx, pending); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.log.Warn("reload subscriber filters; retrying", "err", err)
			r.Notify(pending)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
}

func merge(a, b Change) Change {
	if a.All || b.All {
		return Change{All: true}
	}
	return Change{Subscribers: append(a.Subscribers, b.Subscribers...)}
}

// reload loads and applies the filters of the changed subscribers that are
// connected here.
func (r *Refresher) reload(ctx context.Context, c Change) error {
	connected := r.target.Connected()
	ids := connected
	if !c.All {
		here := make(map[string]bool, len(connected))
		for _, id := range connected {
			here[id] = true
		}
		ids = ids[:0:0]
		for _, id := range c.Subscribers {
			if here[id] {
				ids = append(ids, id)
				here[id] = false
			}
		}
	}
	sort.Strings(ids)
	for start := 0; start < len(ids); start += r.batch {
		end := min(start+r.batch, len(ids))
		gen := r.target.NextGeneration()
		filters, err := Load(ctx, r.q, ids[start:end])
		if err != nil {
			return err
		}
		r.target.ApplyFilters(gen, filters)
	}
	if len(ids) > 0 {
		r.reloads.Add(1)
		r.reloaded.Add(uint64(len(ids)))
	}
	return nil
}
