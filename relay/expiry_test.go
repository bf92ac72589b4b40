package relay_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// tokenLife is how long the short-lived tokens of these tests last. Token
// expiry has a resolution of one second, so a token minted with it expires
// between tokenLife-1s and tokenLife from now.
const tokenLife = 3 * time.Second

// expiryProducer inserts templates that zowi-2 receives, one every few
// milliseconds, until stopped: events committed before, across and after a
// stream's end.
type expiryProducer struct {
	stop chan struct{}
	done chan error
}

func produce(db *pgtest.DB, prefix string) *expiryProducer {
	p := &expiryProducer{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				p.done <- nil
				return
			case <-time.After(5 * time.Millisecond):
			}
			_, err := db.Pool.Exec(context.Background(),
				`INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, '{loc-1}', 'zolo-1')`,
				fmt.Sprintf("%s-%04d", prefix, i))
			if err != nil {
				p.done <- err
				return
			}
		}
	}()
	return p
}

func (p *expiryProducer) Stop(t *testing.T) {
	t.Helper()
	close(p.stop)
	if err := <-p.done; err != nil {
		t.Fatalf("insert templates: %v", err)
	}
}

// ids returns the events' ids.
func ids(events []relaytest.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

// checkExactlyOnce fails unless got is exactly the events zowi-2 should
// receive, each once, in order.
func checkExactlyOnce(t *testing.T, db *pgtest.DB, got []string) {
	t.Helper()
	want := expectedFor(t, db, "zowi-2")
	if !slices.Equal(got, want) {
		t.Fatalf("across the expiry and the resume: got %d events, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
}

func TestAStreamEndsWhenItsTokenExpiresSayingWhyAndResumingWithAFreshTokenLosesNothing(t *testing.T) {
	t.Parallel()
	relaytest.EachTransport(t, func(t *testing.T, tr relaytest.Transport, db *pgtest.DB) {
		r := relaytest.Start(t, db.URL)
		shortLived := mustIssue(t, relaytest.Secret, "zowi-2", tokenLife)
		opened := time.Now()
		first := tr.Subscribe(t, r.URL, shortLived, relaytest.SSEOptions{})
		p := produce(db, tr.Name)

		got, end := first.WaitEnd(t, tokenLife+5*time.Second)
		lasted := time.Since(opened)
		if want := tell(t, tr.Name).expired; end != want {
			t.Errorf("stream ended with %+v, want %+v", end, want)
		}
		if lasted < tokenLife-time.Second {
			t.Errorf("stream ended after %s, before its token expired", lasted)
		}
		if len(got) == 0 {
			t.Fatal("no event before the token expired: the resume below would prove nothing")
		}
		if status, msg := tr.Refusal(t, r.URL, shortLived, relaytest.SSEOptions{}); status != 401 || !strings.Contains(msg, "expired") {
			t.Errorf("reconnect with the expired token: %d %q, want 401 saying expired", status, msg)
		}

		resumed := tr.Subscribe(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{LastEventID: got[len(got)-1].ID})
		p.Stop(t)
		relaytest.InsertTemplate(t, db, "after the resume", "zolo-1", "loc-1")
		want := expectedFor(t, db, "zowi-2")
		got = append(got, resumed.Collect(t, len(want)-len(got), settle)...)
		checkExactlyOnce(t, db, ids(got))
		resumed.Quiet(t, 100*time.Millisecond)
	})
}

func TestStreamsOfLongLivedTokensOutliveShortLivedOnes(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	// One expiry must end its own stream only, whichever transport.
	short := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(mustIssue(t, relaytest.Secret, "zowi-2", tokenLife)))
	sse := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{})
	wsc := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "zowi-2"), relaytest.SSEOptions{})
	select {
	case <-short.Done():
	case <-time.After(tokenLife + 5*time.Second):
		t.Fatal("the short-lived token's stream is still open")
	}
	relaytest.InsertTemplate(t, db, "after the expiry", "zolo-1", "loc-1")
	if got := names(t, sse.Collect(t, 1, settle)); got[0] != "after the expiry" {
		t.Errorf("SSE stream of a long-lived token got %q", got)
	}
	if got := names(t, wsc.Collect(t, 1, settle)); got[0] != "after the expiry" {
		t.Errorf("WebSocket stream of a long-lived token got %q", got)
	}
}
