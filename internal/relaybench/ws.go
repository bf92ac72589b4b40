package relaybench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/coder/websocket"
)

// WebSocket opens GET /ws streams: one text message per event,
// {"id":"…","topic":"…","data":{…row…}}, the token in access_token.
type WebSocket struct{}

// wsReadLimit admits rows of any reasonable size (the default is 32 KiB).
const wsReadLimit = 64 << 20

// Open implements Transport.
func (WebSocket) Open(ctx context.Context, dial DialFunc, base *url.URL, token string, topics []string) (Stream, error) {
	u := *base
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	u.Path = joinPath(base.Path, "/ws")
	u.RawQuery = url.Values{"topic": topics, "access_token": {token}}.Encode()
	client := &http.Client{Transport: &http.Transport{DialContext: dial}}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &RejectedError{Status: resp.StatusCode, Body: err.Error()}
		}
		return nil, fmt.Errorf("open websocket %s: %w", u.Redacted(), err)
	}
	conn.SetReadLimit(wsReadLimit)
	return &wsStream{conn: conn}, nil
}

type wsStream struct {
	conn *websocket.Conn
	msg  struct {
		ID    string          `json:"id"`
		Topic string          `json:"topic"`
		Data  json.RawMessage `json:"data"`
	}
}

// Next implements Stream.
func (s *wsStream) Next() (Event, error) {
	for {
		typ, b, err := s.conn.Read(context.Background())
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) && strings.Contains(ce.Reason, "slow") {
				return Event{}, fmt.Errorf("%w (%s)", ErrSlowConsumer, ce.Reason)
			}
			return Event{}, fmt.Errorf("read websocket: %w", err)
		}
		if typ != websocket.MessageText {
			continue
		}
		s.msg.ID, s.msg.Topic, s.msg.Data = "", "", nil
		if err := json.Unmarshal(b, &s.msg); err != nil {
			return Event{}, fmt.Errorf("decode websocket message: %w", err)
		}
		return Event{ID: []byte(s.msg.ID), Type: []byte(s.msg.Topic), Data: s.msg.Data}, nil
	}
}

func (s *wsStream) Close() error { return s.conn.CloseNow() }
