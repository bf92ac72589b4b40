package eventlog_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

func announced(n, payloadSize int) []eventlog.Event {
	events := make([]eventlog.Event, n)
	for i := range events {
		events[i] = eventlog.Event{
			ID:        eventlog.ID{Xid: 7, Seq: int64(i + 1)},
			Topic:     "templates",
			Payload:   []byte(fmt.Sprintf(`{"name":%q}`, strings.Repeat("x", payloadSize))),
			Audience:  []string{"location:loc-1", "org:org-1"},
			Actor:     "zolo-1",
			CreatedAt: time.Date(2026, 11, 26, 1, 2, 3, 456789000, time.UTC),
		}
	}
	return events
}

// decodeAll decodes payloads in order and returns the events they carry and
// the last announcement's Upto.
func decodeAll(t *testing.T, prev eventlog.ID, payloads []string) ([]eventlog.Event, eventlog.ID) {
	t.Helper()
	var got []eventlog.Event
	var upto eventlog.ID
	for _, p := range payloads {
		if len(p) > eventlog.MaxAnnouncement {
			t.Fatalf("payload of %d bytes, over the %d limit", len(p), eventlog.MaxAnnouncement)
		}
		a, err := eventlog.DecodeAnnouncement([]byte(p))
		if err != nil {
			t.Fatalf("decode %q: %v", p[:min(len(p), 80)], err)
		}
		if len(a.Events) > 0 {
			if a.Prev != prev {
				t.Fatalf("announcement continues from %s, want %s: a relay could not chain it", a.Prev, prev)
			}
			prev = a.Events[len(a.Events)-1].ID
			got = append(got, a.Events...)
		}
		upto = a.Upto
	}
	return got, upto
}

func TestSmallEventsTravelWholeInAnnouncementsThatChain(t *testing.T) {
	events := announced(40, 300) // about 12 kB: two or more payloads
	prev := eventlog.ID{Xid: 6, Seq: 99}
	payloads, err := eventlog.EncodeAnnouncements(prev, events, events[len(events)-1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(payloads) < 2 {
		t.Fatalf("40 events of 300 bytes fit in %d payload(s); want them split", len(payloads))
	}
	got, upto := decodeAll(t, prev, payloads)
	if len(got) != len(events) {
		t.Fatalf("decoded %d events, want %d", len(got), len(events))
	}
	for i := range got {
		w, g := events[i], got[i]
		if g.ID != w.ID || g.Topic != w.Topic || string(g.Payload) != string(w.Payload) ||
			strings.Join(g.Audience, ",") != strings.Join(w.Audience, ",") || g.Actor != w.Actor || !g.CreatedAt.Equal(w.CreatedAt) {
			t.Fatalf("event %d changed on the way: got %+v, want %+v", i, g, w)
		}
	}
	if upto != events[len(events)-1].ID {
		t.Fatalf("Upto = %s, want the last event", upto)
	}
}

func TestALargeEventIsAnnouncedByPositionAndRelaysReadTheRest(t *testing.T) {
	events := append(announced(2, 100), announced(1, 20_000)...)
	events[2].ID = eventlog.ID{Xid: 7, Seq: 3}
	upto := events[2].ID
	payloads, err := eventlog.EncodeAnnouncements(eventlog.ID{}, events, upto)
	if err != nil {
		t.Fatal(err)
	}
	got, gotUpto := decodeAll(t, eventlog.ID{}, payloads)
	if len(got) != 2 {
		t.Fatalf("carried %d events, want the 2 small ones before the large one", len(got))
	}
	if gotUpto != upto {
		t.Fatalf("final Upto = %s, want %s so relays read the large event from the log", gotUpto, upto)
	}
}

func TestAPositionOnlyAnnouncementCarriesNoEvents(t *testing.T) {
	id := eventlog.ID{Xid: 9, Seq: 3}
	a, err := eventlog.DecodeAnnouncement([]byte(eventlog.EncodePosition(id)))
	if err != nil || a.Upto != id || len(a.Events) != 0 {
		t.Fatalf("got %+v, %v; want Upto %s and no events", a, err, id)
	}
	for _, bad := range []string{"{", `{"prev":"x","events":[{"id":"y"}]}`, "not-an-id", id.String(),
		`{"prev":"0000000000000001-0000000000000002","events":[{"id":"0000000000000001-0000000000000001"}]}`} {
		if _, err := eventlog.DecodeAnnouncement([]byte(bad)); err == nil {
			t.Errorf("DecodeAnnouncement(%q) accepted a malformed payload", bad)
		}
	}
}

func TestAnnouncedRowsKeepTheirExactBytes(t *testing.T) {
	e := announced(1, 10)[0]
	e.Payload = []byte(`{"id": "a", "name": "spaced  out", "n": [1, 2]}`)
	payloads, err := eventlog.EncodeAnnouncements(eventlog.ID{}, []eventlog.Event{e}, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := decodeAll(t, eventlog.ID{}, payloads)
	if len(got) != 1 || string(got[0].Payload) != string(e.Payload) {
		t.Fatalf("row arrived as %q, want %q byte for byte", got[0].Payload, e.Payload)
	}
}
