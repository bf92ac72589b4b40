package eventlog_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
)

// fixture is one org with three locations and a user of every type.
const fixture = `
INSERT INTO orgs (id, name) VALUES ('org-a', 'A');
INSERT INTO locations (id, org_id, name) VALUES ('loc-1', 'org-a', 'One'), ('loc-2', 'org-a', 'Two'), ('loc-3', 'org-a', 'Three');
INSERT INTO users (id, name, user_type, org_id, location_id) VALUES
    ('zowi', 'Owner', 'ZOWI', 'org-a', NULL),
    ('zewi', 'Editor', 'ZEWI', 'org-a', NULL),
    ('zolo', 'Local', 'ZOLO', 'org-a', 'loc-1'),
    ('zelo', 'Local editor', 'ZELO', 'org-a', 'loc-2');`

func newDB(t *testing.T) *pgtest.DB {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, fixture)
	return db
}

// readUntil polls ReadAfter(after) until it has returned n events in all, and
// returns them. Polling is the contract: an event becomes readable once every
// transaction of this database older than it has ended, which takes an
// unknown but short time.
func readUntil(t *testing.T, q eventlog.Querier, after eventlog.ID, n int) []eventlog.Event {
	t.Helper()
	ctx := context.Background()
	var got []eventlog.Event
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < n {
		batch, err := eventlog.ReadAfter(ctx, q, after, 1000)
		if err != nil {
			t.Fatalf("ReadAfter(%s): %v", after, err)
		}
		if len(batch) > 0 {
			got = append(got, batch...)
			after = batch[len(batch)-1].ID
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("read %d events after 20 s, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not a guess at timing
	}
	if len(got) > n {
		t.Fatalf("read %d events, want %d", len(got), n)
	}
	return got
}

func countEvents(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM relay.events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestARolledBackInsertProducesNoEvent(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO templates (id, name, share_location_ids, created_by) VALUES ('gone', 'x', '{loc-1}', 'zolo')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// A committed marker after the rolled-back insert: once it is readable,
	// everything before it is settled, so the empty result below is final.
	db.Exec(t, `INSERT INTO templates (id, name, share_location_ids, created_by) VALUES ('marker', 'x', '{loc-1}', 'zolo')`)
	events := readUntil(t, db.Pool, eventlog.ID{}, 1)
	if got := templateID(t, events[0]); got != "marker" {
		t.Errorf("the only event is template %q, want marker", got)
	}
	if n := countEvents(t, db); n != 1 {
		t.Errorf("relay.events holds %d rows, want 1 (the rolled-back insert must leave none)", n)
	}
}

func templateID(t *testing.T, e eventlog.Event) string {
	t.Helper()
	var row struct{ ID string }
	if err := json.Unmarshal(e.Payload, &row); err != nil {
		t.Fatalf("event %s payload %s: %v", e.ID, e.Payload, err)
	}
	return row.ID
}

func TestACommittedInsertProducesExactlyOneEventCarryingTheRow(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var rowJSON []byte
	err := db.Pool.QueryRow(context.Background(), `
INSERT INTO templates (name, share_location_ids, created_by)
VALUES ('Q3 menu', '{loc-2,loc-1,loc-2}', 'zolo')
RETURNING to_jsonb(templates.*)`).Scan(&rowJSON)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	events := readUntil(t, db.Pool, eventlog.ID{}, 1)
	e := events[0]

	var got, want map[string]any
	if err := json.Unmarshal(e.Payload, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rowJSON, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("payload = %s\nwant the row %s", e.Payload, rowJSON)
	}
	if e.Topic != "templates" {
		t.Errorf("topic = %q, want templates", e.Topic)
	}
	if e.Actor != "zolo" {
		t.Errorf("actor = %q, want the creator zolo", e.Actor)
	}
	audience := slices.Sorted(slices.Values(e.Audience))
	if wantAud := []string{"location:loc-1", "location:loc-2", "org:org-a"}; !slices.Equal(audience, wantAud) {
		t.Errorf("audience = %v, want %v (each shared location once, and the creator's org)", audience, wantAud)
	}
	if e.CreatedAt.IsZero() || time.Since(e.CreatedAt) > time.Hour {
		t.Errorf("created_at = %v, want about now", e.CreatedAt)
	}
	if n := countEvents(t, db); n != 1 {
		t.Errorf("relay.events holds %d rows, want exactly 1", n)
	}
}

func TestLargeRowsAreStoredAndReadBackWhole(t *testing.T) {
	t.Parallel()
	// NOTIFY payloads stop at 8000 bytes; the log must not.
	for _, size := range []int{20_000, 200_000} {
		db := newDB(t)
		// Random text: TOAST compression must not be what makes it fit.
		raw := make([]byte, size/2)
		_, _ = rand.Read(raw)
		name := hex.EncodeToString(raw)
		db.Exec(t, `INSERT INTO templates (id, name, share_location_ids, created_by) VALUES ('big', $1, '{loc-1}', 'zolo')`, name)

		events := readUntil(t, db.Pool, eventlog.ID{}, 1)
		var row struct{ Name string }
		if err := json.Unmarshal(events[0].Payload, &row); err != nil {
			t.Fatalf("%d-byte row: payload does not decode: %v", size, err)
		}
		if row.Name != name {
			t.Errorf("%d-byte row: read back a name of %d bytes that differs from the %d bytes written", size, len(row.Name), len(name))
		}
	}
}

func TestTailIsTheNewestSettledEventAndTheHorizonOnAnEmptyLog(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := context.Background()
	tail, err := eventlog.Tail(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if !tail.IsZero() {
		t.Errorf("tail of an empty log = %s, want the zero ID (the initial horizon)", tail)
	}
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by) VALUES ('a', '{loc-1}', 'zolo'), ('b', '{loc-1}', 'zolo')`)
	events := readUntil(t, db.Pool, eventlog.ID{}, 2)
	tail, err = eventlog.Tail(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if tail != events[1].ID {
		t.Errorf("tail = %s, want the last event %s", tail, events[1].ID)
	}
}

func TestReadRangeReturnsOnlyEventsTheSubscriberMayReceive(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	db.Exec(t, `
INSERT INTO templates (id, name, share_location_ids, created_by) VALUES
    ('t1', 'x', '{loc-1}', 'zewi'),
    ('t2', 'x', '{loc-2}', 'zewi'),
    ('t3', 'x', '{loc-1}', 'zolo'),
    ('t4', 'x', '{loc-3,loc-1}', 'zelo')`)
	all := readUntil(t, db.Pool, eventlog.ID{}, 4)
	sel := eventlog.Selector{Topics: []string{"templates"}, Keys: []string{"location:loc-1"}, Subscriber: "zolo"}
	got, more := readRange(t, db, eventlog.ID{}, all[3].ID, sel, 100, 0)
	if more {
		t.Error("ReadRange of the whole range says there is more")
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, templateID(t, e))
	}
	// t2 is for loc-2 only; t3 is zolo's own.
	if want := []string{"t1", "t4"}; !slices.Equal(ids, want) {
		t.Errorf("ReadRange for zolo = %v, want %v", ids, want)
	}
}

// readRange runs ReadRange in a transaction of its own.
func readRange(t *testing.T, db *pgtest.DB, after, upto eventlog.ID, sel eventlog.Selector, limit, maxBytes int) (events []eventlog.Event, more bool) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginTxFunc(ctx, db.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		events, more, err = eventlog.ReadRange(ctx, tx, after, upto, sel, limit, maxBytes)
		return err
	})
	if err != nil {
		t.Fatalf("ReadRange(%s, %s]: %v", after, upto, err)
	}
	return events, more
}

func TestReadRangeStopsOnceItsRowsReachTheByteBoundButAlwaysReadsOne(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	// Ten rows of about 100 KB, then ten small ones.
	db.Exec(t, `
INSERT INTO templates (id, name, share_location_ids, created_by)
SELECT 'big-' || lpad(i::text, 2, '0'), repeat('x', 100000), '{loc-1}', 'zewi' FROM generate_series(1, 10) i;
INSERT INTO templates (id, name, share_location_ids, created_by)
SELECT 'small-' || lpad(i::text, 2, '0'), 'x', '{loc-1}', 'zewi' FROM generate_series(1, 10) i;`)
	all := readUntil(t, db.Pool, eventlog.ID{}, 20)
	sel := eventlog.Selector{Topics: []string{"templates"}, Keys: []string{"location:loc-1"}, Subscriber: "zolo"}
	cases := []struct {
		name         string
		limit, bytes int
		want         int
		wantMore     bool
	}{
		{"bound of three rows' bytes", 100, 250_000, 3, true},
		{"bound below one row", 100, 1_000, 1, true},
		{"no byte bound", 100, 0, 20, false},
		{"event limit first", 2, 10 << 20, 2, true},
		{"bound above the range", 100, 10 << 20, 20, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, more := readRange(t, db, eventlog.ID{}, all[19].ID, sel, c.limit, c.bytes)
			if len(got) != c.want || more != c.wantMore {
				t.Fatalf("limit %d, %d bytes: got %d events (more %v), want %d (more %v)", c.limit, c.bytes, len(got), more, c.want, c.wantMore)
			}
			for i, e := range got {
				if e.ID != all[i].ID {
					t.Fatalf("event %d is %s, want %s: a bounded read must be a prefix of the range", i, e.ID, all[i].ID)
				}
			}
		})
	}
	// A replay reading batch after batch gets every event once, in order.
	var ids []eventlog.ID
	for after := (eventlog.ID{}); ; {
		got, more := readRange(t, db, after, all[19].ID, sel, 100, 250_000)
		for _, e := range got {
			ids = append(ids, e.ID)
		}
		if !more {
			break
		}
		after = got[len(got)-1].ID
	}
	want := make([]eventlog.ID, len(all))
	for i, e := range all {
		want[i] = e.ID
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("batches of 250 KB read %v, want every event once, in order: %v", ids, want)
	}
}

func TestReadsInBatchesStopOnceTheirRowsReachTheByteBoundButAlwaysReadOne(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	db.Exec(t, `
INSERT INTO templates (id, name, share_location_ids, created_by)
SELECT 'big-' || lpad(i::text, 2, '0'), repeat('x', 100000), '{loc-1}', 'zewi' FROM generate_series(1, 10) i;
INSERT INTO templates (id, name, share_location_ids, created_by)
SELECT 'small-' || lpad(i::text, 2, '0'), 'x', '{loc-1}', 'zewi' FROM generate_series(1, 10) i;`)
	all := readUntil(t, db.Pool, eventlog.ID{}, 20)
	reads := map[string]func(b eventlog.Batch) ([]eventlog.Event, bool, error){
		"between": func(b eventlog.Batch) ([]eventlog.Event, bool, error) {
			return eventlog.ReadBetweenBatch(context.Background(), db.Pool, eventlog.ID{}, all[19].ID, b)
		},
		"after": func(b eventlog.Batch) ([]eventlog.Event, bool, error) {
			return eventlog.NewReader(time.Minute).ReadAfterBatch(context.Background(), db.Pool, eventlog.ID{}, b)
		},
	}
	for name, read := range reads {
		for _, c := range []struct {
			b        eventlog.Batch
			want     int
			wantFull bool
		}{
			{eventlog.Batch{Events: 100, Bytes: 250_000}, 3, true},
			{eventlog.Batch{Events: 100, Bytes: 1_000}, 1, true},
			{eventlog.Batch{Events: 100}, 20, false},
			{eventlog.Batch{Events: 2, Bytes: 10 << 20}, 2, true},
			{eventlog.Batch{Events: 100, Bytes: 10 << 20}, 20, false},
		} {
			got, full, err := read(c.b)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != c.want || full != c.wantFull {
				t.Errorf("%s %+v: got %d events (full %v), want %d (full %v)", name, c.b, len(got), full, c.want, c.wantFull)
			}
			for i, e := range got {
				if e.ID != all[i].ID {
					t.Fatalf("%s %+v: event %d is %s, want %s", name, c.b, i, e.ID, all[i].ID)
				}
			}
		}
	}
}
