package triggers_test

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

// exampleTopic is the worked example of docs/topics.md.
const exampleTopic = "../testdata/topic_messages.sql"

func TestTheTopicsGuideShowsTheTestedExampleVerbatim(t *testing.T) {
	t.Parallel()
	example, err := os.ReadFile(exampleTopic)
	if err != nil {
		t.Fatal(err)
	}
	guide, err := os.ReadFile("../docs/topics.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(guide), string(example)) {
		t.Errorf("docs/topics.md does not contain %s verbatim: update the guide when the example changes", exampleTopic)
	}
}

func TestATopicDefinedInSQLOnlyGetsFiltersEventsAndFilterNotifications(t *testing.T) {
	t.Parallel()
	db := newWorld(t)
	example, err := os.ReadFile(exampleTopic)
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, string(example))
	db.Exec(t, "INSERT INTO channels (id, org_id) VALUES ('kitchen', 'org-a'), ('bar', 'org-a')")
	// The app writes as a producer with privileges on its own tables only.
	roles := pgtest.WithRoles(t, db)
	db.Exec(t, "GRANT SELECT, INSERT, UPDATE, DELETE ON public.channels, public.channel_members, public.messages TO "+roles.Producer)
	producer, err := pgx.Connect(context.Background(), roles.ProducerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(ctx, "LISTEN pgrelay_filters"); err != nil {
		t.Fatal(err)
	}

	// Membership changes are announced, naming the members whose keys changed.
	if _, err := producer.Exec(ctx, "INSERT INTO channel_members (channel_id, user_id) VALUES ('kitchen', 'zolo-a1'), ('kitchen', 'zewi-a'), ('bar', 'zewi-a')"); err != nil {
		t.Fatalf("a producer adding channel members: %v", err)
	}
	n, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("wait for the membership notification: %v", err)
	}
	var change filterChange
	if err := json.Unmarshal([]byte(n.Payload), &change); err != nil {
		t.Fatalf("payload %q: %v", n.Payload, err)
	}
	slices.Sort(change.Subscribers)
	if want := []string{"zewi-a", "zolo-a1"}; !slices.Equal(change.Subscribers, want) || change.All {
		t.Errorf("membership notification = %+v, want subscribers %v", change, want)
	}

	// The relay's filters now include the new topic's keys beside templates'.
	got := queryStrings(t, db, `
SELECT subscriber || ' ' || key FROM relay.filters(ARRAY['zolo-a1', 'zewi-a', 'zowi-a']) WHERE topic = 'messages'`)
	if want := []string{"zewi-a channel:bar", "zewi-a channel:kitchen", "zolo-a1 channel:kitchen"}; !slices.Equal(got, want) {
		t.Errorf("messages filters = %v, want %v", got, want)
	}

	// An insert is an event of the topic, carrying the row, addressed to the
	// channel, with the author as actor.
	var rowJSON []byte
	if err := producer.QueryRow(ctx, `
INSERT INTO messages (channel_id, author_id, body) VALUES ('kitchen', 'zolo-a1', 'out of basil')
RETURNING to_jsonb(messages.*)`).Scan(&rowJSON); err != nil {
		t.Fatalf("insert message: %v", err)
	}
	var actor string
	var audience []string
	var payload []byte
	if err := db.Pool.QueryRow(ctx, `SELECT audience, actor, payload FROM relay.events WHERE topic = 'messages'`).
		Scan(&audience, &actor, &payload); err != nil {
		t.Fatalf("read the message's event: %v", err)
	}
	if !slices.Equal(audience, []string{"channel:kitchen"}) || actor != "zolo-a1" {
		t.Errorf("event audience %v, actor %q; want [channel:kitchen], zolo-a1", audience, actor)
	}
	var gotRow, wantRow map[string]any
	if err := json.Unmarshal(payload, &gotRow); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rowJSON, &wantRow); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotRow, wantRow) {
		t.Errorf("event payload = %s, want the row %s", payload, rowJSON)
	}

	// Who receives it: members of the channel other than the author.
	recipients := queryStrings(t, db, `
SELECT DISTINCT f.subscriber
  FROM relay.events e, relay.filters($1) f
 WHERE e.topic = 'messages' AND f.topic = e.topic AND f.key = ANY (e.audience)
   AND f.subscriber IS DISTINCT FROM e.actor`, everyone)
	if want := []string{"zewi-a"}; !slices.Equal(recipients, want) {
		t.Errorf("recipients of the message = %v, want %v", recipients, want)
	}
}
