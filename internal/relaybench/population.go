package relaybench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Population is the benchmark's own tenant: one org, its locations, its
// subscribers and the producer. Every id starts with Prefix, so a run never
// touches anyone else's rows and can be removed afterwards.
//
// Subscribers are ZOLO users, Audience of them at each location: a template
// shared with one location reaches exactly Audience subscribers. The
// producer sits at a location of its own that no template is shared with,
// and nobody listens to the org key (there are no ZOWI users), so nothing
// else reaches anyone.
type Population struct {
	Prefix      string
	Subscribers int
	Audience    int
}

// NewPopulation returns a population with a fresh random prefix.
func NewPopulation(subscribers, audience int) (Population, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return Population{}, fmt.Errorf("random run prefix: %w", err)
	}
	return Population{Prefix: "rb" + hex.EncodeToString(b), Subscribers: subscribers, Audience: audience}, nil
}

// Org returns the org id.
func (p Population) Org() string { return p.Prefix + "-org" }

// Producer returns the id of the user who creates the templates.
func (p Population) Producer() string { return p.Prefix + "-producer" }

// Subscriber returns the id of subscriber i (0 ≤ i < Subscribers).
func (p Population) Subscriber(i int) string { return p.Prefix + "-u-" + strconv.Itoa(i) }

// Locations returns how many shared locations there are.
func (p Population) Locations() int { return p.Subscribers / p.Audience }

// Location returns the id of shared location g (0 ≤ g < Locations).
func (p Population) Location(g int) string { return p.Prefix + "-loc-" + strconv.Itoa(g) }

// Create inserts the org, locations and users in one transaction.
func (p Population) Create(ctx context.Context, pool *pgxpool.Pool) error {
	if p.Audience < 1 || p.Subscribers%p.Audience != 0 {
		return fmt.Errorf("population: %d subscribers cannot be split into locations of %d", p.Subscribers, p.Audience)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create bench population: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	steps := []struct {
		what string
		sql  string
		args []any
	}{
		{"org", `INSERT INTO public.orgs (id, name) VALUES ($1, 'relaybench ' || $2)`, []any{p.Org(), p.Prefix}},
		{"locations", `
INSERT INTO public.locations (id, org_id, name)
SELECT $1 || '-loc-' || g, $2, 'bench location ' || g FROM generate_series(0, $3 - 1) AS g
UNION ALL SELECT $1 || '-loc-producer', $2, 'bench producer location'`,
			[]any{p.Prefix, p.Org(), p.Locations()}},
		{"subscribers", `
INSERT INTO public.users (id, name, user_type, org_id, location_id)
SELECT $1 || '-u-' || i, 'bench user ' || i, 'ZOLO', $2, $1 || '-loc-' || (i / $4)
  FROM generate_series(0, $3 - 1) AS i`,
			[]any{p.Prefix, p.Org(), p.Subscribers, p.Audience}},
		{"producer", `
INSERT INTO public.users (id, name, user_type, org_id, location_id)
VALUES ($1, 'bench producer', 'ZOLO', $2, $3 || '-loc-producer')`,
			[]any{p.Producer(), p.Org(), p.Prefix}},
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("create bench %s: %w", s.what, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create bench population: %w", err)
	}
	return nil
}

// Remove deletes the population's templates, users, locations and org.
// Their events stay in relay.events until retention prunes them.
func (p Population) Remove(ctx context.Context, pool *pgxpool.Pool) error {
	steps := []struct{ what, sql string }{
		{"templates", `DELETE FROM public.templates WHERE created_by IN (SELECT id FROM public.users WHERE org_id = $1)`},
		{"users", `DELETE FROM public.users WHERE org_id = $1`},
		{"locations", `DELETE FROM public.locations WHERE org_id = $1`},
		{"org", `DELETE FROM public.orgs WHERE id = $1`},
	}
	for _, s := range steps {
		if _, err := pool.Exec(ctx, s.sql, p.Org()); err != nil {
			return fmt.Errorf("remove bench %s: %w", s.what, err)
		}
	}
	return nil
}
