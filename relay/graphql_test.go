package relay_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay/graphql"
	"github.com/pgrelay/pgrelay/relay/retention"
)

// seedSubscription is the seed app's subscription, verbatim.
const seedSubscription = `subscription { templateAdded { id name shareLocationIds } }`

// graphqlLibraries are the client libraries the tests drive, by the
// protocol they speak.
var graphqlLibraries = []struct {
	name, library string
	// typename: the library adds __typename to every selection set
	// (Apollo's cache does).
	typename bool
}{
	{"graphql-transport-ws/graphql-ws", "graphql-ws", false},
	{"graphql-transport-ws/apollo-client", "apollo", true},
	{"graphql-ws/subscriptions-transport-ws", "legacy", false},
}

// subscriptionsOpen waits until the relays serve n GraphQL subscriptions
// between them: counted by the transport's gauge, which counts a stream once
// it is open (its filter loaded, live delivery started), where the hub's
// count includes subscriptions still loading theirs. A template inserted
// before then would not be for a subscription that asked for no replay.
func subscriptionsOpen(t *testing.T, relays []*relaytest.Relay, n int) {
	t.Helper()
	relaytest.Eventually(t, graphqlWait, "the subscriptions to open", func() bool {
		total := 0.0
		for _, r := range relays {
			if v := sample(scrape(t, r.URL), "pgrelay_connected_subscribers", "transport", "graphql"); v > 0 {
				total += v
			}
		}
		return total == float64(n)
	})
}

func TestGraphQLSeedScenarioAcrossFourRelaysDeliversExactlyTheSelectedFieldsOfWhatTheRulesSelect(t *testing.T) {
	t.Parallel()
	for _, lib := range graphqlLibraries {
		t.Run(lib.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			relaytest.Seed(t, db)
			relays := make([]*relaytest.Relay, 4)
			for i := range relays {
				relays[i] = relaytest.Start(t, db.URL)
			}
			node := startGraphQLNode(t, "client.js", map[string]any{"library": lib.library})
			clients := map[string]*gqlClient{}
			for i, u := range relaytest.SeedUsers {
				c := node.connect(u, map[string]any{"url": graphqlURL(relays[i%4].URL), "token": relaytest.Token(t, u), "tokenIn": "payload"})
				c.subscribe("seed", seedSubscription, nil)
				clients[u] = c
			}
			subscriptionsOpen(t, relays, len(relaytest.SeedUsers))

			want := relaytest.InsertSeedTemplates(t, db)
			wantFields := []string{"id", "name", "shareLocationIds"}
			if lib.typename {
				wantFields = append(wantFields, "__typename")
				sort.Strings(wantFields)
			}
			for _, u := range relaytest.SeedUsers {
				var got []string
				lastID := ""
				for _, r := range clients[u].results("seed", len(want[u])) {
					res := decodeResult(t, r)
					row := res.Data["templateAdded"]
					got = append(got, row["name"].(string))
					if fields := slices.Sorted(maps.Keys(row)); !slices.Equal(fields, wantFields) {
						t.Errorf("%s received fields %v, want only the selected %v", u, fields, wantFields)
					}
					if lib.typename && row["__typename"] != "Template" {
						t.Errorf("%s: __typename %v, want Template", u, row["__typename"])
					}
					id, _ := res.Extensions["id"].(string)
					if id == "" || id <= lastID {
						t.Errorf("%s: extensions.id %q after %q, want increasing event ids", u, id, lastID)
					}
					lastID = id
				}
				if !slices.Equal(got, want[u]) {
					t.Errorf("%s received %q, want %q", u, got, want[u])
				}
			}
			for _, u := range relaytest.SeedUsers {
				clients[u].quiet("seed", 100*time.Millisecond)
			}
		})
	}
}

func TestGraphQLResumeWithAfterOnAnotherRelayLosesAndRepeatsNothing(t *testing.T) {
	t.Parallel()
	for _, lib := range graphqlLibraries {
		t.Run(lib.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			relaytest.Seed(t, db)
			a, b := relaytest.Start(t, db.URL), relaytest.Start(t, db.URL)
			token := relaytest.Token(t, "zowi-2")
			node := startGraphQLNode(t, "client.js", map[string]any{"library": lib.library})
			first := node.connect("first", map[string]any{"url": graphqlURL(a.URL), "token": token, "tokenIn": "header"})
			first.subscribe("live", `subscription { templateAdded { name } }`, nil)
			subscriptionsOpen(t, []*relaytest.Relay{a}, 1)
			want := relaytest.InsertSeedTemplates(t, db)["zowi-2"] // four templates
			got := first.results("live", len(want))
			after := decodeResult(t, got[1]).Extensions["id"].(string)

			// The client went away after the second; it resumes on the
			// other relay, while more is inserted.
			second := node.connect("second", map[string]any{"url": graphqlURL(b.URL), "token": token, "tokenIn": "query"})
			second.subscribe("resumed", `subscription Resume($after: String) { t: templateAdded(after: $after) { name } }`, map[string]any{"after": after})
			subscriptionsOpen(t, []*relaytest.Relay{b}, 1)
			relaytest.InsertTemplate(t, db, "t7 after the resume", "zolo-1", "loc-1")
			var names []string
			for _, r := range second.results("resumed", 3) {
				names = append(names, decodeResult(t, r).Data["t"]["name"].(string))
			}
			if wantNames := append(slices.Clone(want[2:]), "t7 after the resume"); !slices.Equal(names, wantNames) {
				t.Errorf("resumed after the second template: got %q, want %q", names, wantNames)
			}
			second.quiet("resumed", 100*time.Millisecond)
		})
	}
}

func TestGraphQLIntrospectionGivesAClientSchemaWithTheTopicsSubscriptionAndColumns(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	for _, lib := range []string{"graphql-ws", "legacy"} {
		t.Run(lib, func(t *testing.T) {
			c := graphqlClient(t, lib, map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "zewi-1"), "tokenIn": "payload"})
			c.send(map[string]any{"introspect": "i"})
			got := c.await("the introspected schema", func(r report) bool { return r.str("op") == "i" })
			sdl := got.str("schema")
			if sdl == "" {
				t.Fatalf("graphql-js could not build a schema from the introspection result: %v", got)
			}
			for _, want := range []string{
				"templateAdded(after: String): Template!",
				"type Template {", "id: String!", "name: String!", "shareLocationIds: [String]!", "createdBy: String!", "createdAt: String!",
				"scalar JSON", "topics: [String!]!",
			} {
				if !strings.Contains(sdl, want) {
					t.Errorf("schema lacks %q:\n%s", want, sdl)
				}
			}
			c.await("the introspection to complete", func(r report) bool { return r.str("op") == "i" && r.has("complete") })
		})
	}
}

func TestGraphQLInvalidQueryGetsErrorsWithLocationsAndTheConnectionStaysOpen(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	for _, lib := range []string{"graphql-ws", "legacy"} {
		t.Run(lib, func(t *testing.T) {
			c := graphqlClient(t, lib, map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "zowi-1"), "tokenIn": "payload"})
			c.subscribe("bad", "subscription {\n  templateAdded { id colour }\n}", nil)
			got := c.await("the validation error", func(r report) bool { return r.str("op") == "bad" && (r.has("error") || r.has("next")) })
			errs := got["error"]
			if got.has("next") { // the legacy protocol delivers errors as a result
				errs = got["next"]
			}
			e, _ := errs.(map[string]any)["errors"].([]any)
			if len(e) != 1 {
				t.Fatalf("got %v, want one GraphQL error", got)
			}
			first := e[0].(map[string]any)
			if msg, _ := first["message"].(string); !strings.Contains(msg, "colour") {
				t.Errorf("error %q does not name the unknown field", msg)
			}
			locs, _ := first["locations"].([]any)
			if len(locs) != 1 || locs[0].(map[string]any)["line"] != float64(2) || locs[0].(map[string]any)["column"] != float64(22) {
				t.Errorf("locations %v, want line 2 column 22", first["locations"])
			}
			// The same connection serves a valid subscription after it.
			c.subscribe("good", `subscription { templateAdded { name } }`, nil)
			subscriptionsOpen(t, []*relaytest.Relay{r}, 1)
			relaytest.InsertTemplate(t, db, "after the error", "zolo-1", "loc-1")
			if name := decodeResult(t, c.results("good", 1)[0]).Data["templateAdded"]["name"]; name != "after the error" {
				t.Errorf("got %v after the error", name)
			}
			c.send(map[string]any{"unsubscribe": "good"})
			relaytest.Eventually(t, graphqlWait, "the subscription to end", func() bool { return r.Server.Hub().Stats().Subscriptions == 0 })
		})
	}
}

func TestGraphQLServesATopicOfYourOwnFromItsTableUnderTheRelaysRole(t *testing.T) {
	t.Parallel()
	db := pgtest.NewCore(t)
	roles := pgtest.WithRoles(t, db)
	example, err := os.ReadFile("../testdata/topic_messages.sql")
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, string(example))
	db.Exec(t, "GRANT SELECT, INSERT ON public.accounts, public.channels, public.channel_members, public.messages TO "+roles.Producer)
	producer := session(t, roles.ProducerURL)
	for _, sql := range []string{
		"INSERT INTO accounts VALUES ('ann', 'Ann'), ('bob', 'Bob')",
		"INSERT INTO channels VALUES ('kitchen')",
		"INSERT INTO channel_members VALUES ('kitchen', 'ann'), ('kitchen', 'bob')",
	} {
		if _, err := producer.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	r := relaytest.Start(t, roles.RelayURL)
	node := startGraphQLNode(t, "client.js", map[string]any{"library": "graphql-ws"})
	const query = `subscription { messageAdded { id channelId authorId body postedAt } }`
	ann := node.connect("ann", map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "ann"), "tokenIn": "payload"})
	bob := node.connect("bob", map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "bob"), "tokenIn": "payload"})
	ann.subscribe("m", query, nil)
	bob.subscribe("m", query, nil)
	subscriptionsOpen(t, []*relaytest.Relay{r}, 2)
	if _, err := producer.Exec(context.Background(), "INSERT INTO messages (channel_id, author_id, body) VALUES ('kitchen', 'ann', 'out of basil')"); err != nil {
		t.Fatal(err)
	}
	msg := decodeResult(t, bob.results("m", 1)[0]).Data["messageAdded"]
	// id is a bigint: a string, so that JavaScript loses no digit.
	if msg["body"] != "out of basil" || msg["authorId"] != "ann" || msg["channelId"] != "kitchen" || msg["id"] != "1" {
		t.Errorf("bob received %v, want ann's message with id \"1\"", msg)
	}
	if at, _ := msg["postedAt"].(string); !strings.HasPrefix(at, "20") {
		t.Errorf("postedAt %v, want a timestamp string", msg["postedAt"])
	}
	ann.quiet("m", 200*time.Millisecond) // the author

	// Counted under the transport's own name, as /events and /ws are.
	resp, err := http.Get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`pgrelay_connected_subscribers{transport="graphql"} 2`, `pgrelay_deliveries_total{mode="live",transport="graphql"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestGraphQLResumeFromBeforeTheRetentionHorizonGetsAResetResultThenLiveEvents(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	sse := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	for i := range 3 {
		relaytest.InsertTemplate(t, db, fmt.Sprintf("old %d", i), "zowi-1", "loc-1")
	}
	seen := sse.Collect(t, 3, graphqlWait)
	sse.Close()
	db.Exec(t, `UPDATE relay.events SET created_at = now() - interval '2 hours'`)
	relaytest.Eventually(t, graphqlWait, "old events pruned", func() bool {
		if _, err := retention.Prune(context.Background(), db.Pool, time.Hour, 0, 10); err != nil {
			t.Fatal(err)
		}
		return eventCount(t, db) == 0
	})

	c := graphqlClient(t, "graphql-ws", map[string]any{"url": graphqlURL(r.URL), "token": relaytest.Token(t, "zolo-1"), "tokenIn": "payload"})
	c.subscribe("s", `subscription($after: String) { templateAdded(after: $after) { name } }`, map[string]any{"after": seen[0].ID})
	reset := decodeResult(t, c.results("s", 1)[0])
	if len(reset.Errors) != 1 || reset.Errors[0]["extensions"].(map[string]any)["code"] != "RESET" || reset.Extensions["reset"] != true {
		t.Fatalf("first result %+v, want a RESET error", reset)
	}
	relaytest.InsertTemplate(t, db, "live", "zowi-1", "loc-1")
	live := decodeResult(t, c.results("s", 1)[0])
	if live.Data["templateAdded"]["name"] != "live" || live.Extensions["id"].(string) <= reset.Extensions["id"].(string) {
		t.Errorf("after the reset: %+v, want the live template after the reset's id %v", live, reset.Extensions["id"])
	}
}

func TestGraphQLFromAPageOfAnotherOriginIsRefused(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := rawGraphQL(t, graphqlURL(r.URL), graphql.TransportWS, map[string]string{"Origin": "https://evil.example"})
	if got := c.await("the refusal", func(r report) bool { return r.has("unexpected") || r.has("open") }); got["unexpected"] != float64(http.StatusForbidden) {
		t.Errorf("got %v, want 403", got)
	}
}
