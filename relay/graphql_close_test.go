package relay_test

import (
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/graphql"
)

// rawGraphQL opens a WebSocket to url speaking protocol message by message
// (graphql/testdata/raw.js).
func rawGraphQL(t *testing.T, url, protocol string, headers map[string]string) *gqlClient {
	cfg := map[string]any{"url": url, "headers": headers}
	if protocol != "" {
		cfg["protocol"] = protocol
	}
	return &gqlClient{n: startGraphQLNode(t, "raw.js", cfg), name: "", t: t}
}

// message waits for a protocol message of type typ.
func (c *gqlClient) message(typ string) map[string]any {
	c.t.Helper()
	r := c.await("a "+typ+" message", func(r report) bool {
		m, _ := r["message"].(map[string]any)
		return (m != nil && m["type"] == typ) || r.has("closed")
	})
	if r.has("closed") {
		c.t.Fatalf("closed with %v %q while waiting for a %s message", r["closed"], r["reason"], typ)
	}
	return r["message"].(map[string]any)
}

// closed waits for the connection to close and returns its code and reason.
func (c *gqlClient) closed() (int, string) {
	c.t.Helper()
	r := c.await("the close", func(r report) bool { return r.has("closed") })
	code, _ := r["closed"].(float64)
	return int(code), r.str("reason")
}

func (c *gqlClient) sendMessage(m map[string]any) { c.n.send(map[string]any{"send": m}) }

func initMessage(token string) map[string]any {
	return map[string]any{"type": "connection_init", "payload": map[string]any{"authorization": "Bearer " + token}}
}

func subscribeMessage(id string) map[string]any {
	return map[string]any{"id": id, "type": "subscribe", "payload": map[string]any{"query": seedSubscription}}
}

func TestGraphQLTransportWSClosesWithTheProtocolsCodes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.GraphQLInitTimeout = 300 * time.Millisecond })
	url := graphqlURL(r.URL)
	token := relaytest.Token(t, "zowi-1")
	acked := func(c *gqlClient) {
		c.sendMessage(initMessage(token))
		c.message("connection_ack")
	}
	cases := []struct {
		name     string
		code     int
		reason   string
		scenario func(c *gqlClient)
	}{
		{"a message that is not JSON", graphql.CloseBadMessage, "Invalid message", func(c *gqlClient) {
			acked(c)
			c.n.send(map[string]any{"text": "hello?"})
		}},
		{"a binary message", graphql.CloseBadMessage, "binary", func(c *gqlClient) {
			acked(c)
			c.n.send(map[string]any{"binary": true})
		}},
		{"a subscribe before connection_ack", graphql.CloseUnauthorized, "Unauthorized", func(c *gqlClient) {
			c.sendMessage(subscribeMessage("1"))
		}},
		{"a bad token", graphql.CloseUnauthorized, "Unauthorized", func(c *gqlClient) {
			c.sendMessage(initMessage("not.a.jwt"))
		}},
		{"no token anywhere", graphql.CloseUnauthorized, "Unauthorized", func(c *gqlClient) {
			c.sendMessage(map[string]any{"type": "connection_init"})
		}},
		{"a token of no subscriber", graphql.CloseForbidden, "Forbidden", func(c *gqlClient) {
			c.sendMessage(initMessage(relaytest.Token(t, "nobody")))
		}},
		{"no connection_init in time", graphql.CloseInitTimeout, "Connection initialisation timeout", func(c *gqlClient) {}},
		{"a second subscribe with a running id", graphql.CloseDuplicateID, "Subscriber for 1 already exists", func(c *gqlClient) {
			acked(c)
			c.sendMessage(subscribeMessage("1"))
			c.sendMessage(subscribeMessage("1"))
		}},
		{"a second connection_init", graphql.CloseTooManyInits, "Too many initialisation requests", func(c *gqlClient) {
			acked(c)
			c.sendMessage(initMessage(token))
		}},
		{"a message over 64 KiB", graphql.CloseMessageTooBig, "message over", func(c *gqlClient) {
			acked(c)
			c.n.send(map[string]any{"text": `{"type":"ping","payload":"` + strings.Repeat("x", 70<<10) + `"}`})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawGraphQL(t, url, graphql.TransportWS, nil)
			c.await("the handshake", func(r report) bool { return r.has("open") })
			tc.scenario(c)
			code, reason := c.closed()
			if code != tc.code || !strings.Contains(reason, tc.reason) {
				t.Errorf("closed with %d %q, want %d with a reason containing %q", code, reason, tc.code, tc.reason)
			}
		})
	}
	relaytest.Eventually(t, graphqlWait, "every subscription to end", func() bool { return r.Server.Hub().Stats().Subscriptions == 0 })
}

func TestGraphQLTransportWSAnswersPingWithPongAndCompleteEndsOnlyThatSubscription(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := rawGraphQL(t, graphqlURL(r.URL), graphql.TransportWS, map[string]string{"Authorization": "Bearer " + relaytest.Token(t, "zowi-2")})
	c.sendMessage(map[string]any{"type": "connection_init"}) // the token came with the handshake
	c.message("connection_ack")
	c.sendMessage(map[string]any{"type": "ping", "payload": map[string]any{"n": 1}})
	if pong := c.message("pong"); pong["payload"].(map[string]any)["n"] != float64(1) {
		t.Errorf("pong %v, want the ping's payload", pong)
	}
	c.sendMessage(subscribeMessage("a"))
	c.sendMessage(map[string]any{"id": "b", "type": "subscribe", "payload": map[string]any{"query": `subscription { t: templateAdded { n: name createdBy } }`}})
	subscriptionsOpen(t, []*relaytest.Relay{r}, 2)
	c.sendMessage(map[string]any{"id": "a", "type": "complete"})
	relaytest.Eventually(t, graphqlWait, "a to end", func() bool { return r.Server.Hub().Stats().Subscriptions == 1 })
	relaytest.InsertTemplate(t, db, "for b only", "zolo-1", "loc-1")
	next := c.message("next")
	if next["id"] != "b" {
		t.Fatalf("next for %v, want b only: %v", next["id"], next)
	}
	b, _ := json.Marshal(next["payload"].(map[string]any)["data"])
	if string(b) != `{"t":{"createdBy":"zolo-1","n":"for b only"}}` {
		t.Errorf("data %s, want the aliased selection only", b)
	}
}

func TestGraphQLLegacyProtocolAcknowledgesKeepsAliveAndReportsConnectionErrors(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.Heartbeat = 200 * time.Millisecond })
	url := graphqlURL(r.URL)

	t.Run("ka after the ack and every heartbeat", func(t *testing.T) {
		c := rawGraphQL(t, url, graphql.LegacyWS, nil)
		c.sendMessage(initMessage(relaytest.Token(t, "zowi-1")))
		c.message("connection_ack")
		c.message("ka")
		c.message("ka")
		c.sendMessage(map[string]any{"type": "connection_terminate"})
		if code, _ := c.closed(); code != 1000 {
			t.Errorf("closed with %d after connection_terminate, want 1000", code)
		}
	})
	t.Run("a bad token gets connection_error, then 4401", func(t *testing.T) {
		c := graphqlClient(t, "legacy", map[string]any{"url": url, "payload": map[string]any{"authorization": "Bearer nope"}})
		got := c.await("the connection error", func(r report) bool { return r.has("connection_error") })
		if msg, _ := got["connection_error"].(map[string]any)["message"].(string); !strings.Contains(msg, "Unauthorized") {
			t.Errorf("connection_error %v, want it to say Unauthorized", got)
		}
		if code, _ := c.closed(); code != graphql.CloseUnauthorized {
			t.Errorf("closed with %d, want %d", code, graphql.CloseUnauthorized)
		}
	})
	t.Run("a start before connection_init is closed with 4401", func(t *testing.T) {
		c := rawGraphQL(t, url, graphql.LegacyWS, nil)
		c.sendMessage(map[string]any{"id": "1", "type": "start", "payload": map[string]any{"query": seedSubscription}})
		if code, _ := c.closed(); code != graphql.CloseUnauthorized {
			t.Errorf("closed with %d, want %d", code, graphql.CloseUnauthorized)
		}
	})
}

func TestGraphQLLibraryClientWithABadTokenIsClosedWith4401(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := graphqlClient(t, "graphql-ws", map[string]any{"url": graphqlURL(r.URL), "payload": map[string]any{"access_token": "forged"}})
	if code, reason := c.closed(); code != graphql.CloseUnauthorized {
		t.Errorf("closed with %d %q, want %d", code, reason, graphql.CloseUnauthorized)
	}
}

func TestGraphQLTokenExpiryEndsTheConnectionWith4401(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	for _, lib := range []string{"graphql-ws", "legacy"} {
		t.Run(lib, func(t *testing.T) {
			t.Parallel()
			token, err := auth.Issue([]byte(relaytest.Secret), "zewi-1", 2*time.Second, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			c := graphqlClient(t, lib, map[string]any{"url": graphqlURL(r.URL), "token": token, "tokenIn": "payload"})
			c.subscribe("s", seedSubscription, nil)
			if code, reason := c.closed(); code != graphql.CloseUnauthorized || !strings.Contains(reason, "expired") {
				t.Errorf("closed with %d %q, want %d saying the token expired", code, reason, graphql.CloseUnauthorized)
			}
		})
	}
}

func TestGraphQLWithoutAGraphQLSubprotocolIsRefusedBeforeTheUpgrade(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := rawGraphQL(t, graphqlURL(r.URL), "", nil)
	got := c.await("the refusal", func(r report) bool { return r.has("unexpected") || r.has("open") })
	if got["unexpected"] != float64(http.StatusBadRequest) || !strings.Contains(got.str("body"), "graphql-transport-ws") {
		t.Errorf("got %v, want 400 naming the subprotocols", got)
	}
	resp, err := http.Get(r.URL + "/graphql")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(body), `"error"`) {
		t.Errorf("plain GET: %d %s, want 426 with a JSON error", resp.StatusCode, body)
	}
}

func TestGraphQLShutdownClosesConnectionsWith1012(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := graphqlClient(t, "graphql-ws", map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "zowi-1"), "tokenIn": "payload"})
	c.await("the ack", func(r report) bool { return r.has("connected") })
	r.Stop(t)
	if code, _ := c.closed(); code != graphql.CloseShutdown {
		t.Errorf("closed with %d on shutdown, want %d", code, graphql.CloseShutdown)
	}
}

func TestGraphQLSubscriptionsPerConnectionAreCapped(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.GraphQLMaxSubscriptions = 1 })
	c := rawGraphQL(t, graphqlURL(r.URL), graphql.TransportWS, nil)
	c.sendMessage(initMessage(relaytest.Token(t, "zowi-1")))
	c.message("connection_ack")
	c.sendMessage(subscribeMessage("1"))
	c.sendMessage(subscribeMessage("2"))
	got := c.message("error")
	if b, _ := json.Marshal(got); got["id"] != "2" || !strings.Contains(string(b), "at most 1 subscriptions") {
		t.Errorf("got %s, want an error for the second subscription", b)
	}
	relaytest.Eventually(t, graphqlWait, "the first to stay open", func() bool { return r.Server.Hub().Stats().Subscriptions == 1 })
}

func TestGraphQLClientThatStopsReadingIsCutOffAndItsSubscriptionFreed(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.QueueBytes = 64 << 10
		c.WriteTimeout = 500 * time.Millisecond
	})
	c := rawGraphQL(t, graphqlURL(r.URL), graphql.TransportWS, nil)
	c.sendMessage(initMessage(relaytest.Token(t, "zowi-1")))
	c.message("connection_ack")
	c.sendMessage(subscribeMessage("1"))
	subscriptionsOpen(t, []*relaytest.Relay{r}, 1)
	c.n.send(map[string]any{"pause": true})
	big := strings.Repeat("x", 100<<10)
	for i := range 60 {
		relaytest.InsertTemplate(t, db, big+strings.Repeat("y", i), "zolo-1", "loc-1")
	}
	relaytest.Eventually(t, graphqlWait, "the slow client to be cut off", func() bool {
		st := r.Server.Hub().Stats()
		return st.SlowConsumers >= 1 && st.Subscriptions == 0
	})
	c.n.send(map[string]any{"resume": true})
	if code, _ := c.closed(); code != graphql.CloseSlowConsumer && code != 1006 {
		t.Errorf("closed with %d, want %d (or 1006 when the close frame could not be sent)", code, graphql.CloseSlowConsumer)
	}
}

// Not parallel: it counts the goroutines of the test process, which holds
// the relay.
func TestGraphQLIdleSubscriptionsHoldNoGoroutineEach(t *testing.T) {
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := rawGraphQL(t, graphqlURL(r.URL), graphql.TransportWS, nil)
	c.sendMessage(initMessage(relaytest.Token(t, "zowi-1")))
	c.message("connection_ack")
	settled := func() int {
		// Goroutines that finish their work (a replay, a delivery) take a
		// moment to exit: the count is read once it holds still.
		prev := -1
		for {
			time.Sleep(100 * time.Millisecond)
			n := runtime.NumGoroutine()
			if n == prev {
				return n
			}
			prev = n
		}
	}
	before := settled()
	const n = 30
	for i := range n {
		c.sendMessage(subscribeMessage(strconv.Itoa(i)))
	}
	subscriptionsOpen(t, []*relaytest.Relay{r}, n)
	relaytest.InsertTemplate(t, db, "one event for all", "zolo-1", "loc-1")
	for range n {
		c.message("next")
	}
	after := settled()
	t.Logf("goroutines: %d before, %d with %d idle subscriptions", before, after, n)
	if after-before >= n/3 {
		t.Errorf("%d goroutines with %d idle subscriptions, %d before: want no goroutine per subscription", after, n, before)
	}
}

func TestGraphQLConnectionsOfOneSubscriberAreCappedApartFromTheirSubscriptions(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MaxConnectionsPerUser = 2 })
	url := graphqlURL(r.URL)
	token := relaytest.Token(t, "zowi-1")
	first := rawGraphQL(t, url, graphql.TransportWS, nil)
	first.sendMessage(initMessage(token))
	first.message("connection_ack")
	// Its connection and one subscription: two places, in two counts.
	first.sendMessage(subscribeMessage("1"))
	subscriptionsOpen(t, []*relaytest.Relay{r}, 1)
	second := rawGraphQL(t, url, graphql.TransportWS, nil)
	second.sendMessage(initMessage(token))
	second.message("connection_ack")
	third := rawGraphQL(t, url, graphql.TransportWS, nil)
	third.sendMessage(initMessage(token))
	if code, reason := third.closed(); code != graphql.CloseTryAgainLater || !strings.Contains(reason, "too many") {
		t.Errorf("a third connection closed with %d %q, want %d saying too many", code, reason, graphql.CloseTryAgainLater)
	}
	// A place given back is free again.
	second.sendMessage(map[string]any{"type": "connection_init"})
	second.closed() // 4429
	again := rawGraphQL(t, url, graphql.TransportWS, nil)
	again.sendMessage(initMessage(token))
	again.message("connection_ack")
}
