package walcapture_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/seal"
	"github.com/pgrelay/pgrelay/relay/walcapture"
)

// announcements listens on the events channel of db and opens what arrives
// with key.
func announcements(t *testing.T, db *pgtest.DB, key *seal.Key) <-chan eventlog.Announcement {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}
	out := make(chan eventlog.Announcement, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			plain, err := key.Open(n.Channel, n.PID, n.Payload)
			if err != nil {
				t.Errorf("an announcement from session %d does not open: %v", n.PID, err)
				continue
			}
			a, err := eventlog.DecodeAnnouncement(plain)
			if err != nil {
				t.Errorf("undecodable announcement: %v", err)
				continue
			}
			out <- a
		}
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close(context.Background()) })
	return out
}

// newestEvents returns the last n events of the log, in order.
func newestEvents(t *testing.T, db *pgtest.DB, n int) []eventlog.Event {
	t.Helper()
	events, err := eventlog.ReadBetween(context.Background(), db.Pool, eventlog.ID{}, eventlog.ID{Xid: 1 << 62}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) < n {
		t.Fatalf("the log holds %d events, want at least %d", len(events), n)
	}
	return events[len(events)-n:]
}

func TestALogTransactionAnnouncesItsEventsAsItCommitsUnlessAnOlderWriterIsStillOpen(t *testing.T) {
	db := pgtest.NewInMode(t, "wal")
	relaytest.Seed(t, db)
	ctx := context.Background()
	key, err := seal.New(make([]byte, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	heard := announcements(t, db, key)
	var mu sync.Mutex
	var ranges [][2]eventlog.ID
	woken := make(chan struct{}, 100)
	startCapture(t, db, func(cfg *walcapture.Config) {
		cfg.Announce = key
		cfg.Announced = func(prev, upto eventlog.ID) {
			mu.Lock()
			defer mu.Unlock()
			ranges = append(ranges, [2]eventlog.ID{prev, upto})
		}
		cfg.Wake = func() { woken <- struct{}{} }
	})
	pgtest.WaitCapture(t, db, "wal")
	for _, name := range []string{"zeroth", "first", "second"} {
		if err := insertTemplates(ctx, db, name, 1); err != nil {
			t.Fatal(err)
		}
	}
	// They arrive in announcements of the capture's own (one per log
	// transaction, which may hold several), rows as the log holds them,
	// each announcement following the event before its first.
	var got []eventlog.Announcement
	for n := 0; n < 3; {
		select {
		case a := <-heard:
			got = append(got, a)
			n += len(a.Events)
		case <-woken:
			t.Fatal("the capture left its events to the sequencer though no older writer was open")
		case <-time.After(10 * time.Second):
			t.Fatalf("%d events announced after 10s, want 3", n)
		}
	}
	logged := newestEvents(t, db, 3)
	n := 0
	for i, a := range got {
		if i > 0 && a.Prev != got[i-1].Upto {
			t.Fatalf("an announcement follows %s, want %s (the event before its first)", a.Prev, got[i-1].Upto)
		}
		for _, e := range a.Events {
			if n == 3 {
				t.Fatalf("announced more events than were inserted: %s", e.ID)
			}
			want := logged[n]
			if e.ID != want.ID || string(e.Payload) != string(want.Payload) || e.Topic != want.Topic || e.Actor != want.Actor {
				t.Fatalf("announced %s %s %q, the log holds %s %s %q", e.ID, e.Topic, e.Payload, want.ID, want.Topic, want.Payload)
			}
			n++
		}
		if len(a.Events) == 0 || a.Upto != a.Events[len(a.Events)-1].ID {
			t.Fatalf("announcement up to %s with %d events, want its events up to its last", a.Upto, len(a.Events))
		}
	}
	// The sequencer is told of each range once its announcement is sent.
	reported := func() [][2]eventlog.ID {
		mu.Lock()
		defer mu.Unlock()
		return append([][2]eventlog.ID(nil), ranges...)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r := reported()
		if len(r) == len(got) && r[len(r)-1] == [2]eventlog.ID{got[len(got)-1].Prev, logged[2].ID} {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the capture reported the ranges %v as announced, want %d ending at %s", r, len(got), logged[2].ID)
		}
	}

	// An open write transaction of a role that can write the log (the
	// owner's here) may still append before the capture's events: those
	// are the sequencer's to announce once it has ended.
	owner, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Rollback(ctx)
	if _, err := owner.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	if err := insertTemplates(ctx, db, "third", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case a := <-heard:
		t.Fatalf("announced %v while an older writer was open", a)
	case <-time.After(10 * time.Second):
		t.Fatal("the capture neither announced nor woke the sequencer within 10s")
	}
	select {
	case a := <-heard:
		t.Fatalf("announced %v while an older writer was open", a)
	case <-time.After(200 * time.Millisecond):
	}
	eventuallyLogMatchesTable(t, db, 10*time.Second)
}
