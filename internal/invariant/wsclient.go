package invariant

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/wsmessage"
)

// wsMessage is what GET /ws sends: an event ({"id","topic","data"}) or a
// reset ({"type":"reset","id",...}).

// streamWS opens one WebSocket stream on base, resuming after the last id
// with last_event_id, and reads it until it ends. opened says whether the
// upgrade succeeded.
func (c *Client) streamWS(ctx context.Context, base string) (opened bool, err error) {
	u := wsmessage.URL(base, c.Topics, c.LastID(), nil)
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.Token}},
	})
	if err != nil {
		if resp != nil {
			switch resp.StatusCode {
			case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
				return false, fmt.Errorf("%w: %s: %s", ErrRejected, base, resp.Status)
			}
		}
		return false, fmt.Errorf("connect to %s: %w", base, err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	c.connects.Add(1)
	events := 0
	for {
		if c.BeforeEvent != nil {
			c.BeforeEvent(ctx)
		}
		_, data, err := conn.Read(ctx)
		if err != nil {
			// A close from the relay (shutdown, slow consumer) or a broken
			// connection: the caller reconnects.
			return true, err
		}
		m, err := wsmessage.Decode(data)
		if err != nil {
			return true, errors.Join(ErrRejected, err)
		}
		if m.Type == "reset" {
			c.lastID.Store(m.ID)
			c.Checker.RecordReset(c.Subscriber)
			continue
		}
		c.lastID.Store(m.ID)
		c.Checker.Record(c.Subscriber, Delivery{ID: m.ID, Topic: m.Topic, Data: string(m.Data)})
		events++
		if c.EventsPerConnection > 0 && events >= c.EventsPerConnection {
			conn.Close(websocket.StatusNormalClosure, "reconnecting")
			return true, nil
		}
	}
}
