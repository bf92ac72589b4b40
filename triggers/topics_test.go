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

// filterChange is a payload of the pgrelay_filters channel.
type filterChange struct {
	All         bool     `json:"all"`
	Subscribers []string `json:"subscribers"`
}

func queryStrings(t *testing.T, db *pgtest.DB, sql string, args ...any) []string {
	t.Helper()
	rows, _ := db.Pool.Query(context.Background(), sql, args...)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	slices.Sort(got)
	return got
}

func TestATopicDefinedInSQLOnlyGetsFiltersEventsAndFilterNotifications(t *testing.T) {
	t.Parallel()
	db := pgtest.NewCore(t)
	example, err := os.ReadFile(exampleTopic)
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, string(example))
	// The app writes as a producer with privileges on its own tables only.
	roles := pgtest.WithRoles(t, db)
	db.Exec(t, "GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts, public.channels, public.channel_members, public.messages TO "+roles.Producer)
	producer, err := pgx.Connect(context.Background(), roles.ProducerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close(context.Background())
	db.Exec(t, "INSERT INTO accounts VALUES ('ann', 'Ann'), ('bob', 'Bob'), ('cid', 'Cid'); INSERT INTO channels VALUES ('kitchen'), ('bar')")

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
	if _, err := producer.Exec(ctx, "INSERT INTO channel_members VALUES ('kitchen', 'ann'), ('kitchen', 'bob'), ('bar', 'bob')"); err != nil {
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
	if want := []string{"ann", "bob"}; !slices.Equal(change.Subscribers, want) || change.All {
		t.Errorf("membership notification = %+v, want subscribers %v", change, want)
	}

	// The relay's filters: an existence row for accounts only, and the keys.
	got := queryStrings(t, db, `
SELECT subscriber || ' ' || coalesce(key, '(exists)') FROM relay.filters(ARRAY['ann', 'bob', 'cid', 'nobody'])`)
	if want := []string{"ann (exists)", "ann channel:kitchen", "bob (exists)", "bob channel:bar", "bob channel:kitchen", "cid (exists)"}; !slices.Equal(got, want) {
		t.Errorf("filters = %v, want %v", got, want)
	}

	// An insert is an event of the topic, carrying the row, addressed to the
	// channel, with the author as actor.
	var rowJSON []byte
	if err := producer.QueryRow(ctx, `
INSERT INTO messages (channel_id, author_id, body) VALUES ('kitchen', 'ann', 'out of basil')
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
	if !slices.Equal(audience, []string{"channel:kitchen"}) || actor != "ann" {
		t.Errorf("event audience %v, actor %q; want [channel:kitchen], ann", audience, actor)
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

	// A deleted account is announced too, so relays disconnect it.
	if _, err := producer.Exec(ctx, "DELETE FROM accounts WHERE id = 'cid'"); err != nil {
		t.Fatal(err)
	}
	n, err = listener.WaitForNotification(ctx)
	if err != nil || !strings.Contains(n.Payload, `"cid"`) {
		t.Fatalf("after deleting an account: notification %v, %v; want one naming cid", n, err)
	}
}
