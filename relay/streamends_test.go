package relay_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// endings are what a transport tells a client when the relay ends its
// stream for each reason.
type endings struct{ shutdown, slow, gone, expired relaytest.End }

// told is how each transport tells a client why the relay ended its
// stream: a comment before the end of an SSE body, a close code and reason
// on a WebSocket (CONTRACT §5).
var told = map[string]endings{
	"sse": {
		shutdown: relaytest.End{Reason: "relay shutting down, reconnect"},
		slow:     relaytest.End{Reason: "closed: slow consumer, resume with Last-Event-ID"},
		gone:     relaytest.End{Reason: "closed: subscriber no longer exists"},
		expired:  relaytest.End{Reason: "closed: token expired, reconnect with a fresh token and Last-Event-ID"},
	},
	"ws": {
		shutdown: relaytest.End{Code: ws.CloseShutdown, Reason: ws.ReasonShutdown},
		slow:     relaytest.End{Code: ws.CloseSlowConsumer, Reason: ws.ReasonSlowConsumer},
		gone:     relaytest.End{Code: ws.CloseSubscriberGone, Reason: ws.ReasonSubscriberGone},
		expired:  relaytest.End{Code: ws.CloseUnauthorized, Reason: ws.ReasonTokenExpired},
	},
}

// tell returns how transport tells why a stream ended, failing the test
// for a transport the table does not know yet.
func tell(t *testing.T, transport string) endings {
	t.Helper()
	e, ok := told[transport]
	if !ok {
		t.Fatalf("no expected endings for transport %q: add them to told", transport)
	}
	return e
}

func TestAStreamThatStopsReadingIsClosedAsASlowConsumerToldWhyAndResumesWithoutLoss(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.QueueSize = 2 })
		token := relaytest.Token(t, "zelo-1")
		// The marker's id is where the stalled client resumes from if it
		// received nothing of the burst: ids are the same for every
		// subscriber.
		marker := tr.Subscribe(t, r.URL, token, relaytest.SSEOptions{})
		stalled := tr.Stalled(t, r.URL, token, relaytest.SSEOptions{})
		relaytest.InsertTemplate(t, db, "marker", "zowi-1", "loc-2")
		lastID := marker.Collect(t, 1, settle)[0].ID
		marker.Close()

		// One statement commits 50 events at once: more than the queue
		// holds, whatever the writer manages meanwhile.
		const burst = 50
		db.Exec(t, `INSERT INTO templates (name, share_location_ids, created_by)
		            SELECT 'burst ' || lpad(i::text, 2, '0'), '{loc-2}', 'zowi-1' FROM generate_series(1, $1) AS i`, burst)
		relaytest.Eventually(t, settle, "the relay to drop the slow consumer", func() bool {
			return r.Server.Hub().Stats().SlowConsumers >= 1
		})

		received, end := stalled().WaitEnd(t, settle)
		if want := tell(t, tr.Name).slow; end != want {
			t.Fatalf("the stalled stream ended with %+v, want %+v", end, want)
		}
		var all []string
		for _, name := range names(t, received) {
			if name != "marker" {
				all = append(all, name)
			}
		}
		if len(received) > 0 {
			lastID = received[len(received)-1].ID
		}

		// Resume with the last id until everything arrived. With a queue
		// of two, a resumed stream can be cut again while the burst is
		// still being published; each resume must continue exactly where
		// the last ended.
		var rest relaytest.Stream
		for resumes := 0; len(all) < burst; resumes++ {
			if resumes == 20 {
				t.Fatalf("still missing %d events after %d resumes", burst-len(all), resumes)
			}
			rest = tr.Subscribe(t, r.URL, token, relaytest.SSEOptions{LastEventID: lastID})
			got, end, ended := rest.CollectUnlessEnded(t, burst-len(all), settle)
			if want := tell(t, tr.Name).slow; ended && end != want {
				t.Fatalf("resumed stream ended with %+v, want %+v or no end", end, want)
			}
			if len(got) > 0 {
				lastID = got[len(got)-1].ID
			}
			all = append(all, names(t, got)...)
		}
		for i, name := range all {
			if want := fmt.Sprintf("burst %02d", i+1); name != want {
				t.Fatalf("event %d after resuming: %q, want %q (all: %q)", i, name, want, all)
			}
		}
		rest.Quiet(t, 100*time.Millisecond) // nothing more, nothing twice
	})
}

func TestASlowReaderIsCutOffWithoutAffectingAFastOne(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL, func(c *relay.Config) {
			c.QueueSize = 8
			c.WriteTimeout = 500 * time.Millisecond
		})
		fast := tr.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})
		// The slow reader never reads: once the socket buffers fill,
		// writes block, its queue overflows and the hub drops it.
		_ = tr.Stalled(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})

		// The fast reader keeps up: events are produced in rounds of four,
		// each round after it has received the previous one, so its queue
		// never holds more than four. The slow reader's socket buffers
		// fill up within a few megabytes, then its queue of eight
		// overflows.
		const rounds, perRound = 75, 4
		big := strings.Repeat("y", 50_000)
		for r := range rounds {
			for i := range perRound {
				relaytest.InsertTemplate(t, db, fmt.Sprintf("%s-%03d", big, r*perRound+i), "zolo-1", "loc-1")
			}
			for i, e := range fast.Collect(t, perRound, settle) {
				var row templateRow
				_ = json.Unmarshal([]byte(e.Data), &row)
				if want := fmt.Sprintf("%s-%03d", big, r*perRound+i); row.Name != want {
					t.Fatalf("fast reader: event %d out of order", r*perRound+i)
				}
			}
		}
		// Cut off either by its queue overflowing or by a write timing out.
		relaytest.Eventually(t, settle, "slow reader disconnected", func() bool {
			return !slices.Contains(r.Server.Hub().Connected(), "zowi-1")
		})
		if n := r.Server.Hub().Stats().SlowConsumers; n != 1 {
			t.Errorf("slow consumers counted: %d, want 1", n)
		}
	})
}

func TestADeletedSubscribersLiveStreamEndsAndSaysWhy(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL)
		gone := tr.Subscribe(t, r.URL, relaytest.Token(t, "zolo-9"), relaytest.SSEOptions{})
		staying := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-1"), relaytest.SSEOptions{})
		db.Exec(t, `DELETE FROM users WHERE id = 'zolo-9'`)
		if _, end := gone.WaitEnd(t, settle); end != tell(t, tr.Name).gone {
			t.Fatalf("the deleted subscriber's stream ended with %+v, want %+v", end, tell(t, tr.Name).gone)
		}
		if status, msg := tr.Refusal(t, r.URL, relaytest.Token(t, "zolo-9"), relaytest.SSEOptions{}); status != http.StatusForbidden {
			t.Errorf("the deleted subscriber reconnecting: %d %q, want 403", status, msg)
		}
		relaytest.InsertTemplate(t, db, "after the deletion", "zolo-1", "loc-1")
		if got := names(t, staying.Collect(t, 1, settle)); got[0] != "after the deletion" {
			t.Errorf("another subscriber's stream got %q, want it to go on", got)
		}
	})
}
