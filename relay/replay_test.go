package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/streamclient"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// Pace of the replay clients below: fast enough to finish in seconds, slow
// enough that a replay of replayBacklog events is still running seconds
// after a change made early in it.
const (
	replayBacklog  = 20_000
	paceBurst      = 50
	paceInterval   = 10 * time.Millisecond // 5,000 events a second
	changeAfter    = 2_500                 // events received before the change: mid-batch
	followsChanges = time.Second           // the promise of CONTRACT §4
)

// arrival is an event and when the client read it.
type arrival struct {
	relaytest.Event
	at time.Time
}

// pacedStream is a client that reads a stream at a set pace, through a small
// receive buffer. Its arrivals channel is closed when the stream ends; end
// then says how.
type pacedStream struct {
	arrivals chan arrival
	end      struct {
		at  time.Time
		err error
	}
}

// pace waits after every paceBurst-th event.
func pace(n int, tick *time.Ticker) {
	if n%paceBurst == 0 {
		<-tick.C
	}
}

func openPaced(t *testing.T, tr relaytest.Transport, baseURL, token, lastID string) *pacedStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := tr.Open(ctx, relaytest.SmallReceiveBuffers(8<<10), baseURL, streamclient.Options{Token: token, LastEventID: lastID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := &pacedStream{arrivals: make(chan arrival, 2*replayBacklog)}
	go p.read(st)
	return p
}

func (p *pacedStream) read(st streamclient.Stream) {
	defer close(p.arrivals)
	tick := time.NewTicker(paceInterval)
	defer tick.Stop()
	for n := 1; ; n++ {
		e, err := st.Next()
		if err != nil {
			p.end.at, p.end.err = time.Now(), err
			return
		}
		p.arrivals <- arrival{relaytest.Event{ID: string(e.ID), Event: string(e.Type), Data: string(e.Data)}, time.Now()}
		pace(n, tick)
	}
}

// ending is why the relay ended the stream, once arrivals is closed.
func (p *pacedStream) ending() relaytest.End {
	var ce *streamclient.ClosedError
	if errors.As(p.end.err, &ce) {
		return relaytest.End{Code: ce.Code, Reason: ce.Reason}
	}
	return relaytest.End{}
}

// receive waits for n arrivals.
func (p *pacedStream) receive(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(settle)
	for range n {
		select {
		case _, ok := <-p.arrivals:
			if !ok {
				t.Fatalf("stream ended (%v) before %d events", p.end.err, n)
			}
		case <-deadline:
			t.Fatalf("fewer than %d events within %s", n, settle)
		}
	}
}

func creator(t *testing.T, e relaytest.Event) string {
	t.Helper()
	var row templateRow
	if err := json.Unmarshal([]byte(e.Data), &row); err != nil {
		t.Fatalf("event %s: data is not a template row: %v", e.ID, err)
	}
	return row.CreatedBy
}

// replaySources are where a long replay is served from: the log (the relay
// started after the backlog was written) or the relay's window of the
// recent log (it was running, and recorded the backlog as it was written).
var replaySources = []struct {
	name   string
	window bool
}{{"from the log", false}, {"from the window", true}}

// longReplay seeds the story, inserts a template zowi-2 receives, then
// replayBacklog more that it receives only as a ZOWI of org-1, with a relay
// with small socket buffers started after them, or before them when the
// replay is to come from its window. It returns the relay and the id to
// resume after, from which zowi-2 has the whole backlog to replay; a test
// of the window fails if a replay read the log after all.
func longReplay(t *testing.T, fromWindow bool) (*pgtest.DB, *relaytest.Relay, string) {
	t.Helper()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	var r *relaytest.Relay
	if fromWindow {
		r = relaytest.StartOn(t, db.URL, relaytest.SmallSendBuffers(t, 8<<10))
	}
	first := relaytest.InsertTemplate(t, db, "before the replay", "zolo-1")
	var id eventlog.ID
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT xid, id FROM relay.events WHERE payload->>'id' = $1`, first).Scan(&id.Xid, &id.Seq); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by)
		SELECT 'org-1 template ' || i, '{}', 'zolo-1' FROM generate_series(1, $1::int) AS i`, replayBacklog)
	if !fromWindow {
		return db, relaytest.StartOn(t, db.URL, relaytest.SmallSendBuffers(t, 8<<10)), id.String()
	}
	deadline := time.Now().Add(settle)
	for sample(scrape(t, r.URL), "pgrelay_replay_cache_events") < replayBacklog+1 {
		if time.Now().After(deadline) {
			t.Fatalf("the relay's window does not hold the backlog within %s", settle)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if n := sample(scrape(t, r.URL), "pgrelay_replay_log_reads_total"); n != 0 {
			t.Errorf("replays read the log %v times; the window held everything they asked for", n)
		}
	})
	return db, r, id.String()
}

// eachLongReplay runs test over every transport, with the long replay from
// every source.
func eachLongReplay(t *testing.T, test func(t *testing.T, tr relaytest.Transport, fromWindow bool)) {
	for _, src := range replaySources {
		for _, tr := range relaytest.Transports {
			t.Run(src.name+"/"+tr.Name, func(t *testing.T) {
				t.Parallel()
				test(t, tr, src.window)
			})
		}
	}
}

func TestAReplayStopsSendingTheOldOrgsTemplatesWithinASecondOfAZOWIMovingToAnotherOrg(t *testing.T) {
	t.Parallel()
	eachLongReplay(t, func(t *testing.T, tr relaytest.Transport, fromWindow bool) {
		db, r, after := longReplay(t, fromWindow)
		c := openPaced(t, tr, r.URL, relaytest.Token(t, "zowi-2"), after)
		c.receive(t, changeAfter)

		db.Exec(t, `UPDATE users SET org_id = 'org-2' WHERE id = 'zowi-2'`)
		changed := time.Now()
		// zowi-2 is entitled to org-2's templates now: the first one
		// marks the end of what this test waits for.
		waitForKeys(t, r, "zowi-2", "org:org-2")
		relaytest.InsertTemplate(t, db, "org-2 template after the move", "zolo-9", "loc-9")

		late, old := 0, 0
		var firstLate time.Duration
		deadline := time.After(settle)
		for done := false; !done; {
			select {
			case a, ok := <-c.arrivals:
				if !ok {
					t.Fatalf("stream ended (%v) before org-2's template arrived", c.end.err)
				}
				switch creator(t, a.Event) {
				case "zolo-9":
					done = true
				case "zolo-1":
					old++
					if d := a.at.Sub(changed); d > followsChanges {
						if late == 0 {
							firstLate = d
						}
						late++
					}
				}
			case <-deadline:
				t.Fatalf("org-2's template did not arrive within %s", settle)
			}
		}
		if late > 0 {
			t.Fatalf("%d of org-1's templates arrived more than %s after zowi-2 left org-1 (the first %s after), %d in all after the move",
				late, followsChanges, firstLate.Round(time.Millisecond), old)
		}
		t.Logf("%d of org-1's templates arrived after the move, all within %s", old, followsChanges)
	})
}

func TestAReplayEndsWithinASecondOfItsSubscriberBeingDeleted(t *testing.T) {
	t.Parallel()
	eachLongReplay(t, func(t *testing.T, tr relaytest.Transport, fromWindow bool) {
		db, r, after := longReplay(t, fromWindow)
		c := openPaced(t, tr, r.URL, relaytest.Token(t, "zowi-2"), after)
		c.receive(t, changeAfter)

		db.Exec(t, `DELETE FROM users WHERE id = 'zowi-2'`)
		deleted := time.Now()
		received := 0
		deadline := time.After(settle)
		for open := true; open; {
			select {
			case a, ok := <-c.arrivals:
				if open = ok; ok {
					// Whole events only, even where the stream was cut.
					creator(t, a.Event)
					received++
				}
			case <-deadline:
				t.Fatalf("stream still open %s after its subscriber was deleted", settle)
			}
		}
		if d := c.end.at.Sub(deleted); d > followsChanges {
			t.Errorf("stream ended %s after its subscriber was deleted (%d events meanwhile), want within %s",
				d.Round(time.Millisecond), received, followsChanges)
		}
		if end, want := c.ending(), tell(t, tr.Name).gone; end != want {
			t.Errorf("stream ended with %+v (%v), want %+v", end, c.end.err, want)
		}
		if received+changeAfter >= replayBacklog {
			t.Errorf("the whole backlog was replayed to a deleted subscriber (%d events after the delete)", received)
		}
	})
}

func TestATokenExpiringMidReplayEndsTheStreamAndResumingWithAFreshTokenLosesNothing(t *testing.T) {
	t.Parallel()
	eachLongReplay(t, func(t *testing.T, tr relaytest.Transport, fromWindow bool) {
		db, r, after := longReplay(t, fromWindow)
		// The paced replay takes about four seconds: longer than the token.
		c := openPaced(t, tr, r.URL, mustIssue(t, relaytest.Secret, "zowi-2", tokenLife), after)
		var got []string
		for a := range c.arrivals {
			creator(t, a.Event) // whole events only
			got = append(got, a.ID)
		}
		if len(got) == 0 || len(got) >= replayBacklog {
			t.Fatalf("%d events before the stream ended (%v): the expiry did not fall inside the replay", len(got), c.end.err)
		}
		if end, want := c.ending(), tell(t, tr.Name).expired; end != want {
			t.Errorf("stream ended with %+v (%v), want %+v", end, c.end.err, want)
		}

		fresh := relaytest.Token(t, "zowi-2")
		rest := replayBacklog - len(got)
		got = append(got, ids(tr.Subscribe(t, r.URL, fresh, relaytest.SSEOptions{LastEventID: got[len(got)-1]}).Collect(t, rest, settle))...)
		// Every template of the backlog is for zowi-2 (a ZOWI of the
		// creator's org), and nothing else was inserted.
		want := logAfter(t, db, after)
		if !slices.Equal(got, want) {
			t.Fatalf("got %d events, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
		}
	})
}

// logAfter returns the ids of every event in the log after the id after, in
// order.
func logAfter(t *testing.T, db *pgtest.DB, after string) []string {
	t.Helper()
	from, err := eventlog.ParseID(after)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Pool.Query(context.Background(),
		`SELECT xid, id FROM relay.events WHERE (xid, id) > ($1, $2) ORDER BY xid, id`, from.Xid, from.Seq)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id eventlog.ID
		if err := rows.Scan(&id.Xid, &id.Seq); err != nil {
			t.Fatal(err)
		}
		out = append(out, id.String())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The seed's users, each receiving a different share of the templates
// below, and the templates' creators with what each may share with (its own
// org's locations only).
var (
	everySeedUser = []string{"zowi-1", "zowi-2", "zolo-1", "zewi-1", "zelo-1", "zowi-9", "zolo-9"}
	seedShares    = []struct {
		creator string
		share   []string
	}{
		{"zowi-1", []string{"loc-1"}}, {"zolo-1", []string{"loc-2"}}, {"zewi-1", []string{"loc-3"}},
		{"zelo-1", nil}, {"zowi-2", []string{"loc-1", "loc-2"}}, {"zolo-9", []string{"loc-9"}}, {"zowi-9", nil},
	}
)

// insertSpread inserts n templates by every creator of seedShares in turn,
// named prefix-i.
func insertSpread(ctx context.Context, db *pgtest.DB, prefix string, n int) error {
	for i := range n {
		s := seedShares[i%len(seedShares)]
		share := s.share
		if share == nil {
			share = []string{}
		}
		if _, err := db.Pool.Exec(ctx, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, $2, $3)`,
			fmt.Sprintf("%s-%02d", prefix, i), share, s.creator); err != nil {
			return fmt.Errorf("insert template %s-%02d: %w", prefix, i, err)
		}
	}
	return nil
}

func TestStreamsResumingFromTheRecentPastShareTheRelaysReadsOfTheLogAndEachGetsExactlyItsEventsOnce(t *testing.T) {
	t.Parallel()
	const perUser = 6 // streams per subscriber, all resuming from one position
	streams := perUser * len(everySeedUser)
	for _, c := range []struct {
		name string
		// cacheBytes is --replay-cache-bytes.
		cacheBytes int
		// reads says whether the replays' log reads are as expected.
		reads func(reads, streams int) bool
		want  string
	}{
		{"with the window of the recent log", 64 << 20,
			func(reads, streams int) bool { return reads*10 <= streams }, "at most a tenth of the streams"},
		{"without it", 0,
			func(reads, streams int) bool { return reads >= streams }, "one at least per stream"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
				ctx := context.Background()
				r := relaytest.Start(t, db.URL, func(cfg *relay.Config) { cfg.ReplayCacheBytes = c.cacheBytes })
				watcher := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
				relaytest.InsertTemplate(t, db, "resume after this", "zowi-2")
				resumeAfter := watcher.Collect(t, 1, settle)[0].ID
				if err := insertSpread(ctx, db, "missed", 40); err != nil {
					t.Fatal(err)
				}
				// zowi-1 receives the last of them, so the relay has
				// published them all when it does.
				relaytest.InsertTemplate(t, db, "missed-last", "zowi-2")
				watcher.Collect(t, len(expectedAfter(t, db, "zowi-1", resumeAfter)), settle)
				readsBefore := sample(scrape(t, r.URL), "pgrelay_replay_log_reads_total")

				// Every stream resumes from the same position while new
				// templates keep arriving: each replays the missed ones
				// and goes live without a gap or a duplicate.
				producer := make(chan error, 1)
				go func() { producer <- insertSpread(ctx, db, "live", 21) }()
				resumed := map[string][]relaytest.Stream{}
				for i := range perUser {
					for _, u := range everySeedUser {
						opts := relaytest.SSEOptions{LastEventID: resumeAfter}
						if i%2 == 1 {
							opts.Topics = []string{"templates"}
						}
						resumed[u] = append(resumed[u], tr.Subscribe(t, r.URL, relaytest.Token(t, u), opts))
					}
				}
				if err := <-producer; err != nil {
					t.Fatal(err)
				}
				for _, u := range everySeedUser {
					want := expectedAfter(t, db, u, resumeAfter)
					for i, s := range resumed[u] {
						got := ids(s.Collect(t, len(want), settle))
						if !slices.Equal(got, want) {
							t.Fatalf("%s, stream %d: got %d events, want %d; first difference at %d", u, i, len(got), len(want), firstDiff(got, want))
						}
					}
				}
				for _, ss := range resumed {
					for _, s := range ss {
						s.Quiet(t, 50*time.Millisecond)
					}
				}
				reads := int(sample(scrape(t, r.URL), "pgrelay_replay_log_reads_total") - readsBefore)
				t.Logf("%d streams resumed from %s with %d log reads", streams, resumeAfter, reads)
				if !c.reads(reads, streams) {
					t.Errorf("%d streams resuming from one position made %d log reads, want %s", streams, reads, c.want)
				}
				// -1: the metric is missing.
				if n := sample(scrape(t, r.URL), "pgrelay_replay_cache_restarts_total"); n != 0 {
					t.Errorf("pgrelay_replay_cache_restarts_total = %v, want 0: the window let go of what it held while the relay was connected", n)
				}
			})
		})
	}
}

// expectedAfter returns, from SQL alone, the ids of the events user should
// receive after the id after, in order.
func expectedAfter(t *testing.T, db *pgtest.DB, user, after string) []string {
	t.Helper()
	var out []string
	for _, id := range expectedFor(t, db, user) {
		if id > after { // ids compare as strings in event order
			out = append(out, id)
		}
	}
	return out
}
