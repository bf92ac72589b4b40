// Package workload is the traffic of pgrelay's fault tests: two
// organisations with a user of every kind, producers that insert templates
// with varied audiences from several goroutines (retrying through faults),
// and a barrier event that tells subscribers production is over.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// World is two organisations with users of every kind: org-a (a1, a2, a3)
// and org-b (b1, b2). Ids say what they are: zolo-a1 is a ZOLO of org A at
// location a1. It is the fixture of the sharing-rule tests and the fault
// tests alike.
const World = `
INSERT INTO orgs (id, name) VALUES ('org-a', 'A'), ('org-b', 'B');
INSERT INTO locations (id, org_id, name) VALUES
    ('a1', 'org-a', 'A one'), ('a2', 'org-a', 'A two'), ('a3', 'org-a', 'A three'),
    ('b1', 'org-b', 'B one'), ('b2', 'org-b', 'B two');
INSERT INTO users (id, name, user_type, org_id, location_id) VALUES
    ('zowi-a',  'Owner A',        'ZOWI', 'org-a', NULL),
    ('zowi-a2', 'Second owner A', 'ZOWI', 'org-a', NULL),
    ('zewi-a',  'Editor A',       'ZEWI', 'org-a', NULL),
    ('zolo-a1', 'Local A1',       'ZOLO', 'org-a', 'a1'),
    ('zelo-a2', 'Local ed. A2',   'ZELO', 'org-a', 'a2'),
    ('zolo-a3', 'Local A3',       'ZOLO', 'org-a', 'a3'),
    ('zowi-b',  'Owner B',        'ZOWI', 'org-b', NULL),
    ('zewi-b',  'Editor B',       'ZEWI', 'org-b', NULL),
    ('zolo-b1', 'Local B1',       'ZOLO', 'org-b', 'b1'),
    ('zelo-b2', 'Local ed. B2',   'ZELO', 'org-b', 'b2');`

// barriers are the fault tests' extra users: each only creates the barrier
// template of its org that marks the end of a run.
const barriers = `
INSERT INTO users (id, name, user_type, org_id, location_id) VALUES
    ('barrier-a', 'Barrier A', 'ZEWI', 'org-a', NULL),
    ('barrier-b', 'Barrier B', 'ZEWI', 'org-b', NULL);`

// Subscribers returns the users the fault tests connect: every kind, two
// orgs.
func Subscribers() []string {
	return []string{
		"zowi-a", "zowi-a2", "zewi-a", "zolo-a1", "zelo-a2", "zolo-a3",
		"zowi-b", "zewi-b", "zolo-b1", "zelo-b2",
	}
}

// creators write templates; subscribers among them must never receive their
// own.
func creators() []string {
	return []string{"zowi-a", "zewi-a", "zolo-a1", "zelo-a2", "zowi-b", "zolo-b1", "zelo-b2"}
}

// shares are the audiences templates are shared with, by the creator's org
// (a template is shared only within it): none, one location, several, every
// location of the org, and a repeated id.
func shares() map[byte][][]string {
	return map[byte][][]string{
		'a': {{}, {"a1"}, {"a2"}, {"a3"}, {"a1", "a3"}, {"a1", "a2", "a3"}, {"a1", "a1"}},
		'b': {{}, {"b1"}, {"b2"}, {"b1", "b2"}, {"b2", "b2"}},
	}
}

// orgOf returns the org letter of a creator ("zolo-a1" → 'a').
func orgOf(creator string) byte { return creator[len("zolo-")] }

// Seed inserts the world.
func Seed(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, World+barriers); err != nil {
		return fmt.Errorf("seed the fault-test world: %w", err)
	}
	return nil
}

// Stats count what producers did. Committed counts transactions whose
// commit was acknowledged; a commit lost with its connection may still have
// happened, which is why the checker trusts relay.events, not these counts.
type Stats struct {
	Attempts    int64 // transactions begun
	Committed   int64 // acknowledged commits
	Rows        int64 // templates in acknowledged commits
	Failed      int64 // attempts that failed (and were retried)
	RolledBack  int64 // transactions rolled back on purpose
	LastFailure string
}

// Producers insert templates from several goroutines until stopped.
type Producers struct {
	pool    *pgxpool.Pool
	padding string
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	attempts, committed, rows, failed, rolledBack atomic.Int64
	lastFailure                                   atomic.Value
}

// StartProducers opens a pool on dbURL (application_name pgrelay-producer,
// so faults aimed at the relay's sessions spare it) and starts n producers.
// padding bytes are appended to each template's name, to make rows large.
func StartProducers(ctx context.Context, dbURL string, n, padding int) (*Producers, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("producers: parse database URL: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgrelay-producer"
	cfg.MaxConns = int32(n)
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("producers: open pool: %w", err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p := &Producers{pool: pool, cancel: cancel, padding: strings.Repeat("x", padding)}
	for i := range n {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.run(pctx, i)
		}()
	}
	return p, nil
}

// Committed returns the number of acknowledged commits so far.
func (p *Producers) Committed() int64 { return p.committed.Load() }

// Stop stops the producers, waits for them and returns their counts.
func (p *Producers) Stop() Stats {
	p.cancel()
	p.wg.Wait()
	p.pool.Close()
	s := Stats{
		Attempts: p.attempts.Load(), Committed: p.committed.Load(), Rows: p.rows.Load(),
		Failed: p.failed.Load(), RolledBack: p.rolledBack.Load(),
	}
	s.LastFailure, _ = p.lastFailure.Load().(string)
	return s
}

// run is one producer: mostly single-row transactions, some with several
// rows, some rolled back on purpose (they must reach nobody). A failed
// transaction is retried after a short pause, as an application would.
func (p *Producers) run(ctx context.Context, producer int) {
	rng := rand.New(rand.NewPCG(uint64(producer), 0x70677265))
	creators, shares := creators(), shares()
	for i := 0; ctx.Err() == nil; i++ {
		rows := 1
		if i%7 == 3 {
			rows = 3
		}
		rollback := i%11 == 5
		p.attempts.Add(1)
		err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			for r := range rows {
				creator := creators[rng.IntN(len(creators))]
				inOrg := shares[orgOf(creator)]
				share := inOrg[rng.IntN(len(inOrg))]
				name := fmt.Sprintf("p%d-%05d-%d%s", producer, i, r, p.padding)
				if rollback {
					name = "rolled-back-" + name
				}
				if _, err := tx.Exec(ctx,
					`INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, $2, $3)`,
					name, share, creator); err != nil {
					return err
				}
			}
			if rollback {
				return errRollback
			}
			return nil
		})
		switch {
		case errors.Is(err, errRollback):
			p.rolledBack.Add(1)
		case err == nil:
			p.committed.Add(1)
			p.rows.Add(int64(rows))
		case ctx.Err() != nil:
			return
		default:
			p.failed.Add(1)
			p.lastFailure.Store(err.Error())
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

var errRollback = errors.New("rolled back on purpose")

// WaitCommitted waits until the producers have committed n more
// transactions than when it was called: it proves traffic flowed across a
// fault.
func (p *Producers) WaitCommitted(ctx context.Context, n int64, timeout time.Duration) error {
	target := p.committed.Load() + n
	deadline := time.Now().Add(timeout)
	for p.committed.Load() < target {
		if time.Now().After(deadline) {
			last, _ := p.lastFailure.Load().(string)
			return fmt.Errorf("producers committed %d of %d transactions within %s (last failure: %s)",
				p.committed.Load()-(target-n), n, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// Barrier inserts, in each org, a template shared with every location of
// that org by a user nobody subscribes as: every subscriber receives one,
// after everything produced before it. It retries through faults.
func Barrier(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := pool.Exec(ctx, `
INSERT INTO templates (name, share_location_ids, created_by) VALUES
    ('barrier a', '{a1,a2,a3}', 'barrier-a'),
    ('barrier b', '{b1,b2}', 'barrier-b')`)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("insert barrier templates: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("insert barrier templates: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
