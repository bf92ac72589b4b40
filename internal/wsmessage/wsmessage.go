// Package wsmessage is the relay's WebSocket wire format as its own clients
// read it (the test clients, the invariant checker, the benchmark): the URL
// of a stream, and the text messages {"id","topic","data"} of events and
// {"type":"reset",…} of resets.
package wsmessage

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// Message is one text message of a stream.
type Message struct {
	// Type is "reset" for a reset and empty for an event.
	Type  string          `json:"type"`
	ID    string          `json:"id"`
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
}

// Decode reads one text message.
func Decode(b []byte) (Message, error) {
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return Message{}, fmt.Errorf("decode websocket message: %w", err)
	}
	return m, nil
}

// URL is the ws:// address of GET /ws on the relay at base (http:// or
// https://), with the stream parameters every transport takes: topics and
// the id to resume after, and any extra parameters (access_token).
func URL(base string, topics []string, lastID string, extra url.Values) string {
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	for _, t := range topics {
		q.Add("topic", t)
	}
	if lastID != "" {
		q.Set("last_event_id", lastID)
	}
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}
