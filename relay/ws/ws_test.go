package ws_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// wait bounds every wait for a delivery. It is generous because the log
// reader waits for the oldest open transaction of the whole cluster, and
// parallel tests dropping databases hold such transactions for seconds.
const wait = 30 * time.Second

func names(t *testing.T, events []relaytest.Event) []string {
	t.Helper()
	return relaytest.TemplateNames(t, events)
}

func TestWebSocketMessageIsExactlyIDTopicAndTheRow(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "zelo-1"), relaytest.SSEOptions{Topics: []string{"templates"}})
	id := relaytest.InsertTemplate(t, db, "Q3 menu", "zowi-1", "loc-2")

	var raw []byte
	select {
	case raw = <-c.Raw:
	case <-time.After(wait):
		t.Fatal("no message")
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &msg); err != nil {
		t.Fatalf("message is not a JSON object: %v: %s", err, raw)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range msg {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Equal(keys, []string{"data", "id", "topic"}) {
		t.Fatalf("message keys %q, want [data id topic]: %s", keys, raw)
	}
	var topic, eventID string
	var row relaytest.TemplateRow
	_ = json.Unmarshal(msg["topic"], &topic)
	_ = json.Unmarshal(msg["id"], &eventID)
	if err := json.Unmarshal(msg["data"], &row); err != nil {
		t.Fatalf("data is not the row: %v", err)
	}
	if topic != "templates" || eventID == "" {
		t.Errorf("topic %q id %q, want templates and an event id", topic, eventID)
	}
	if row.ID != id || row.Name != "Q3 menu" || row.CreatedBy != "zowi-1" || !slices.Equal(row.ShareLocationIDs, []string{"loc-2"}) || row.CreatedAt == "" {
		t.Errorf("row %+v, want the inserted template %s", row, id)
	}
}

// Refusals by the shared gate are tested over every transport in
// relay/refusals_test.go; this one is WebSocket's own.
func TestAPlainGETOfTheWebSocketEndpointIsAnsweredUpgradeRequired(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	req, _ := http.NewRequest(http.MethodGet, r.URL+"/ws", nil)
	req.Header.Set("Authorization", "Bearer "+relaytest.Token(t, "zowi-1"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONError(t, resp, http.StatusUpgradeRequired, "WebSocket")
}

func checkJSONError(t *testing.T, resp *http.Response, wantStatus int, wantError string) {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, wantStatus, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e map[string]string
	if err := json.Unmarshal(body, &e); err != nil || len(e) != 1 {
		t.Fatalf("body %s, want {\"error\": \"...\"}", body)
	}
	if !strings.Contains(e["error"], wantError) {
		t.Errorf("error %q, want it to mention %q", e["error"], wantError)
	}
}

func TestWebSocketPingsOnTheHeartbeatAndDropsAClientThatNeverAnswers(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.Heartbeat = 50 * time.Millisecond
		c.WriteTimeout = 300 * time.Millisecond
	})

	var pings atomic.Int32
	answering := relaytest.ReadWS(t, relaytest.DialWS(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{}, &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
	}))
	silent := relaytest.ReadWS(t, relaytest.DialWS(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{}, &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool { return false }, // never pong
	}))

	_, err := silent.WaitClosed(t, wait)
	if status := websocket.CloseStatus(err); status != -1 {
		t.Errorf("silent client closed with code %d, want the connection dropped without a close frame", status)
	}
	relaytest.Eventually(t, wait, "five pings answered", func() bool { return pings.Load() >= 5 })
	relaytest.InsertTemplate(t, db, "still here", "zolo-1", "loc-1")
	if got := names(t, answering.Collect(t, 1, wait)); got[0] != "still here" {
		t.Errorf("answering client got %q", got)
	}
}

func TestWebSocketClientMessagesAreDiscardedUpTo4KiB(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Conn.Write(ctx, websocket.MessageText, []byte(`{"hello":"relay"}`)); err != nil {
		t.Fatalf("write: %v", err)
	}
	relaytest.InsertTemplate(t, db, "after hello", "zolo-1", "loc-1")
	if got := names(t, c.Collect(t, 1, wait)); got[0] != "after hello" {
		t.Fatalf("got %q", got)
	}
	if err := c.Conn.Write(ctx, websocket.MessageText, make([]byte, 5<<10)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_, err := c.WaitClosed(t, wait)
	if status := websocket.CloseStatus(err); status != websocket.StatusMessageTooBig {
		t.Fatalf("closed with %v, want %d (message too big)", err, websocket.StatusMessageTooBig)
	}
}

func TestWebSocketOriginsAreCheckedAgainstTheRelayAndCORSOrigins(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	strict := relaytest.Start(t, db.URL)
	listed := relaytest.Start(t, db.URL, func(c *relay.Config) { c.CORSOrigins = []string{"https://app.example.com"} })
	anyOrigin := relaytest.Start(t, db.URL, func(c *relay.Config) { c.CORSOrigins = []string{"*"} })
	cases := []struct {
		name    string
		relay   *relaytest.Relay
		origin  string
		allowed bool
	}{
		{"no Origin (not a browser)", strict, "", true},
		{"same origin", strict, strict.URL, true},
		{"foreign origin", strict, "https://evil.example", false},
		{"listed origin", listed, "https://app.example.com", true},
		{"unlisted origin", listed, "https://evil.example", false},
		{"listed host with another scheme", listed, "http://app.example.com", false},
		{"any origin with *", anyOrigin, "https://evil.example", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{"Authorization": {"Bearer " + relaytest.Token(t, "zowi-1")}}
			if tc.origin != "" {
				hdr.Set("Origin", tc.origin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, relaytest.WSURL(tc.relay.URL, relaytest.SSEOptions{}), &websocket.DialOptions{HTTPHeader: hdr})
			if tc.allowed {
				if err != nil {
					t.Fatalf("dial from %q: %v", tc.origin, err)
				}
				conn.Close(websocket.StatusNormalClosure, "")
				return
			}
			if err == nil {
				conn.CloseNow()
				t.Fatalf("dial from %q succeeded, want 403", tc.origin)
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("dial from %q: %v, want HTTP 403", tc.origin, err)
			}
		})
	}
}

func TestWebSocketWriteThatTimesOutCountsAsASlowConsumer(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// Queues roomy enough that only the write timeout can end the stream.
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.QueueBytes = 1 << 30
		c.WriteTimeout = 300 * time.Millisecond
	})
	conn := relaytest.DialWS(t, r.URL, relaytest.Token(t, "zelo-1"), relaytest.SSEOptions{}, nil)
	_ = conn // never read: the rows below fill the socket buffers
	db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by)
	            SELECT repeat('x', 1000000), '{loc-2}', 'zowi-1' FROM generate_series(1, 40)`)
	relaytest.Eventually(t, wait, "the stalled stream to end", func() bool {
		return r.Server.Hub().Stats().Subscriptions == 0
	})
	if n := r.Server.Hub().Stats().SlowConsumers; n != 1 {
		t.Errorf("slow consumers %d after a write timed out, want 1", n)
	}
}
