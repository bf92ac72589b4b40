package relay_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// The walk through of docs/topics.md: a database with the relay core alone,
// an app of its own defined in SQL, its producer and the relay logging in
// with the roles of docs/roles.sql, and a subscriber receiving its rows.
func TestATopicOfYourOwnIsServedWithTheCoreAlone(t *testing.T) {
	t.Parallel()
	db := pgtest.NewCore(t)
	roles := pgtest.WithRoles(t, db)
	example, err := os.ReadFile("../testdata/topic_messages.sql")
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, string(example))
	db.Exec(t, "GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts, public.channels, public.channel_members, public.messages TO "+roles.Producer)
	producer := session(t, roles.ProducerURL)
	exec := func(sql string) {
		t.Helper()
		if _, err := producer.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("INSERT INTO accounts VALUES ('ann', 'Ann'), ('bob', 'Bob'), ('cid', 'Cid')")
	exec("INSERT INTO channels VALUES ('kitchen')")
	exec("INSERT INTO channel_members VALUES ('kitchen', 'ann'), ('kitchen', 'bob')")

	r := relaytest.Start(t, roles.RelayURL)
	if status, msg := get(t, r.URL, "topic=messages", [][2]string{{"Authorization", "Bearer " + relaytest.Token(t, "nobody")}}); status != 403 {
		t.Errorf("a token for no account: got %d %q, want 403", status, msg)
	}
	bob := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "bob"), relaytest.SSEOptions{Topics: []string{"messages"}})
	ann := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "ann"), relaytest.SSEOptions{Topics: []string{"messages"}})
	cid := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "cid"), relaytest.SSEOptions{})

	exec("INSERT INTO messages (channel_id, author_id, body) VALUES ('kitchen', 'ann', 'out of basil')")
	got := bob.Collect(t, 1, 10*time.Second)[0]
	if got.Event != "messages" || !strings.Contains(got.Data, `"body": "out of basil"`) || !strings.Contains(got.Data, `"author_id": "ann"`) {
		t.Fatalf("bob received %s %s, want the message row", got.Event, got.Data)
	}
	ann.Quiet(t, 200*time.Millisecond) // the author
	cid.Quiet(t, 10*time.Millisecond)  // not a member

	// Joining the channel reaches a connected subscriber's filter.
	exec("INSERT INTO channel_members VALUES ('kitchen', 'cid')")
	relaytest.Eventually(t, time.Second, "cid listens to the kitchen", func() bool {
		return len(r.Server.Hub().Keys("cid")["messages"]) == 1
	})
	exec("INSERT INTO messages (channel_id, author_id, body) VALUES ('kitchen', 'bob', 'bring some')")
	if got := cid.Collect(t, 1, 10*time.Second)[0]; !strings.Contains(got.Data, "bring some") {
		t.Fatalf("cid received %s, want bob's message", got.Data)
	}
	if got := ann.Collect(t, 1, 10*time.Second)[0]; !strings.Contains(got.Data, "bring some") {
		t.Fatalf("ann received %s, want bob's message", got.Data)
	}
}
