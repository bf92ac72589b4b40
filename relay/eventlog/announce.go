package eventlog

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// MaxAnnouncement bounds one announcement's payload: PostgreSQL refuses
// NOTIFY payloads of 8000 bytes or more.
const MaxAnnouncement = 7500

// Announcement is what the sequencer tells every relay on the events
// channel: the events that follow Prev, in order, when they are small enough
// to travel in notifications; otherwise only Upto, the newest position, and
// relays read the log themselves.
type Announcement struct {
	Prev   ID
	Events []Event
	Upto   ID
}

type wireEvent struct {
	ID        string          `json:"id"`
	Topic     string          `json:"t"`
	Payload   json.RawMessage `json:"p"`
	Audience  []string        `json:"a,omitempty"`
	Actor     string          `json:"x,omitempty"`
	CreatedAt time.Time       `json:"c"`
}

type wireAnnouncement struct {
	Prev   string      `json:"prev,omitempty"`
	Upto   string      `json:"upto,omitempty"`
	Events []wireEvent `json:"events,omitempty"`
}

// EncodeAnnouncements returns the notification payloads announcing events,
// which must be every event in (prev, upto], in order. Events travel in as
// few payloads of at most MaxAnnouncement bytes as they fit in; from the
// first event that does not fit in a payload of its own, the rest is
// announced by position only.
func EncodeAnnouncements(prev ID, events []Event, upto ID) ([]string, error) {
	var out []string
	chunk := wireAnnouncement{Prev: prev.String()}
	size := 0
	flush := func() error {
		if len(chunk.Events) == 0 {
			return nil
		}
		b, err := json.Marshal(chunk)
		if err != nil {
			return fmt.Errorf("encode announcement: %w", err)
		}
		out = append(out, string(b))
		return nil
	}
	for _, e := range events {
		w := wireEvent{ID: e.ID.String(), Topic: e.Topic, Payload: e.Payload, Audience: e.Audience, Actor: e.Actor, CreatedAt: e.CreatedAt}
		b, err := json.Marshal(w)
		if err != nil {
			return nil, fmt.Errorf("encode announced event %s: %w", e.ID, err)
		}
		// 64 bytes cover the envelope: {"prev":"<33>","events":[...]}.
		if size+len(b)+1 > MaxAnnouncement-64 {
			if err := flush(); err != nil {
				return nil, err
			}
			if len(b) > MaxAnnouncement-64 {
				b, _ := json.Marshal(wireAnnouncement{Upto: upto.String()})
				return append(out, string(b)), nil
			}
			chunk = wireAnnouncement{Prev: chunk.Events[len(chunk.Events)-1].ID}
			size = 0
		}
		chunk.Events = append(chunk.Events, w)
		size += len(b) + 1
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		b, _ := json.Marshal(wireAnnouncement{Upto: upto.String()})
		out = append(out, string(b))
	}
	return out, nil
}

// DecodeAnnouncement reads a notification payload of the events channel. A
// bare event id (what earlier versions sent) is an announcement by position.
func DecodeAnnouncement(payload string) (Announcement, error) {
	var a Announcement
	if !strings.HasPrefix(payload, "{") {
		id, err := ParseID(payload)
		a.Upto = id
		return a, err
	}
	var w wireAnnouncement
	if err := json.Unmarshal([]byte(payload), &w); err != nil {
		return a, fmt.Errorf("decode announcement: %w", err)
	}
	var err error
	if w.Upto != "" {
		if a.Upto, err = ParseID(w.Upto); err != nil {
			return a, err
		}
	}
	if len(w.Events) == 0 {
		return a, nil
	}
	if a.Prev, err = ParseID(w.Prev); err != nil {
		return a, err
	}
	last := a.Prev
	for _, we := range w.Events {
		id, err := ParseID(we.ID)
		if err != nil {
			return a, err
		}
		if !last.Less(id) {
			return a, fmt.Errorf("decode announcement: event %s is not after %s", id, last)
		}
		last = id
		a.Events = append(a.Events, Event{ID: id, Topic: we.Topic, Payload: we.Payload, Audience: we.Audience, Actor: we.Actor, CreatedAt: we.CreatedAt})
	}
	a.Upto = last
	return a, nil
}

// ReadBetween returns up to limit events in (after, upto], every topic, in
// order. upto must be settled (returned by a read below the horizon).
func ReadBetween(ctx context.Context, q Querier, after, upto ID, limit int) ([]Event, error) {
	rows, err := q.Query(ctx, `
SELECT xid, id, topic, payload, audience, coalesce(actor, ''), created_at
  FROM relay.events
 WHERE (xid, id) > ($1, $2) AND (xid, id) <= ($3, $4)
 ORDER BY xid, id
 LIMIT $5`, after.Xid, after.Seq, upto.Xid, upto.Seq, limit)
	if err != nil {
		return nil, fmt.Errorf("read events in (%s, %s]: %w", after, upto, err)
	}
	events, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("read events in (%s, %s]: %w", after, upto, err)
	}
	return events, nil
}
