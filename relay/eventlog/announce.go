package eventlog

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// AnnounceChannel is the channel the sequencer announces on, and every
// relay listens to.
const AnnounceChannel = "pgrelay_events"

// MaxAnnouncement bounds one announcement before it is sealed: PostgreSQL
// refuses NOTIFY payloads of 8000 bytes or more, and sealing (relay/seal)
// adds a nonce, a tag and base64, a third more.
const MaxAnnouncement = 5800

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
	Payload   json.RawMessage `json:"p,omitempty"`
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
// announced by position only. Rows keep their exact bytes (encoding/json
// would compact them), so an announced event is delivered byte for byte as
// one read from the log.
func EncodeAnnouncements(prev ID, events []Event, upto ID) ([]string, error) {
	var out []string
	var chunk []string
	chunkPrev, size := prev, 0
	flush := func() {
		if len(chunk) > 0 {
			out = append(out, `{"prev":"`+chunkPrev.String()+`","events":[`+strings.Join(chunk, ",")+`]}`)
		}
	}
	for i, e := range events {
		enc, err := encodeEvent(e)
		if err != nil {
			return nil, err
		}
		// 64 bytes cover the envelope: {"prev":"<33>","events":[...]}.
		if size+len(enc)+1 > MaxAnnouncement-64 {
			flush()
			if len(enc) > MaxAnnouncement-64 {
				return append(out, EncodePosition(upto)), nil
			}
			chunk, chunkPrev, size = nil, events[i-1].ID, 0
		}
		chunk = append(chunk, enc)
		size += len(enc) + 1
	}
	flush()
	if len(out) == 0 {
		out = append(out, EncodePosition(upto))
	}
	return out, nil
}

// encodeEvent renders one event with its row spliced in unchanged.
func encodeEvent(e Event) (string, error) {
	b, err := json.Marshal(wireEvent{ID: e.ID.String(), Topic: e.Topic, Audience: e.Audience, Actor: e.Actor, CreatedAt: e.CreatedAt})
	if err != nil {
		return "", fmt.Errorf("encode announced event %s: %w", e.ID, err)
	}
	if !json.Valid(e.Payload) {
		return "", fmt.Errorf("encode announced event %s: row is not JSON", e.ID)
	}
	return string(b[:len(b)-1]) + `,"p":` + string(e.Payload) + `}`, nil
}

// EncodePosition returns the announcement of the newest position only:
// relays read the events up to it from the log.
func EncodePosition(upto ID) string { return `{"upto":"` + upto.String() + `"}` }

// DecodeAnnouncement reads an announcement (a notification payload of the
// events channel, once opened).
func DecodeAnnouncement(payload []byte) (Announcement, error) {
	var a Announcement
	var w wireAnnouncement
	if err := json.Unmarshal(payload, &w); err != nil {
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
