package relay_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// jsonError checks that a refused stream answered status with a JSON body
// {"error": "..."} and returns the message.
func jsonError(t *testing.T, s *relaytest.SSE, status int) string {
	t.Helper()
	if s.Status != status {
		t.Fatalf("status %d, want %d (body %s)", s.Status, status, s.Body)
	}
	if ct := s.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var body struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(s.Body), &body); err != nil || body.Error == "" {
		t.Fatalf("body %q is not {\"error\": \"...\"} (%v)", s.Body, err)
	}
	return body.Error
}

func TestRelayAtMaxConnectionsRefusesWith503AndRetryAfterUntilAStreamCloses(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MaxConnections = 2 })
	first := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zowi-1")))
	second := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zolo-1")))
	if first.Status != 200 || second.Status != 200 {
		t.Fatalf("streams below the cap refused: %d %d", first.Status, second.Status)
	}
	third := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zewi-1")))
	jsonError(t, third, http.StatusServiceUnavailable)
	if third.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	first.Close()
	relaytest.Eventually(t, 5*time.Second, "a slot freed by the closed stream", func() bool {
		s := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zewi-1")))
		return s.Status == http.StatusOK
	})
}

func TestRelayCapsStreamsPerSubscriberWith429(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.MaxConnectionsPerUser = 2 })
	tok := relaytest.BearerHeader(relaytest.Token(t, "zowi-1"))
	for i := range 2 {
		if s := relaytest.OpenSSE(t, r.URL+"/events", tok); s.Status != 200 {
			t.Fatalf("stream %d of zowi-1 refused: %d %s", i+1, s.Status, s.Body)
		}
	}
	msg := jsonError(t, relaytest.OpenSSE(t, r.URL+"/events", tok), http.StatusTooManyRequests)
	if !strings.Contains(msg, "subscriber") {
		t.Errorf("429 message %q does not say the subscriber has too many streams", msg)
	}
	if s := relaytest.OpenSSE(t, r.URL+"/events", relaytest.BearerHeader(relaytest.Token(t, "zolo-1"))); s.Status != 200 {
		t.Errorf("another subscriber refused: %d %s", s.Status, s.Body)
	}
	// The capped streams still work.
	sub := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "after the refusal", "zowi-2", "loc-1")
	sub.Collect(t, 1, settle)
}

func TestStreamParametersWithBadValuesGet400JSONAndUnknownOnesAreIgnored(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	tok := relaytest.Token(t, "zowi-1")
	manyTopics := url.Values{}
	for range 65 {
		manyTopics.Add("topic", "templates")
	}
	cases := []struct {
		name   string
		query  string
		header http.Header
		want   int
	}{
		{"unknown parameter", "?colour=blue&utm_source=x", nil, 200},
		{"known topic", "?topic=templates", nil, 200},
		{"empty topic", "?topic=", nil, 400},
		{"topic with bad characters", "?topic=Templates%20x", nil, 400},
		{"unparsable query", "?topic=templates;drop", nil, 400},
		{"bad escape", "?topic=%zz", nil, 400},
		{"unknown topic", "?topic=invoices", nil, 400},
		{"too many topics", "?" + manyTopics.Encode(), nil, 400},
		{"malformed last_event_id", "?last_event_id=42", nil, 400},
		{"upper-case last_event_id", "?last_event_id=" + strings.Repeat("A", 16) + "-" + strings.Repeat("0", 16), nil, 400},
		{"malformed Last-Event-ID header", "", http.Header{"Last-Event-Id": {"yesterday"}}, 400},
		{"valid last_event_id", "?last_event_id=" + strings.Repeat("0", 16) + "-" + strings.Repeat("0", 16), nil, 200},
		{"bad access_token", "?access_token=not.a.jwt", http.Header{}, 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := relaytest.BearerHeader(tok)
			if c.header != nil {
				h = c.header
				if _, ok := h["Authorization"]; !ok && !strings.Contains(c.query, "access_token") {
					h.Set("Authorization", "Bearer "+tok)
				}
			}
			s := relaytest.OpenSSE(t, r.URL+"/events"+c.query, h)
			if c.want == 200 {
				if s.Status != 200 {
					t.Fatalf("status %d, want 200 (body %s)", s.Status, s.Body)
				}
				return
			}
			jsonError(t, s, c.want)
		})
	}
}

func TestCORSAllowsConfiguredOriginsOnly(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.CORSOrigins = []string{"https://app.example"} })
	open := relaytest.Start(t, db.URL)

	preflight := func(base, origin string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, base+"/events", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		req.Header.Set("Access-Control-Request-Headers", "authorization, last-event-id")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := preflight(r.URL, "https://app.example")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example" {
		t.Errorf("preflight from an allowed origin: Access-Control-Allow-Origin %q", got)
	}
	if got := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")); !strings.Contains(got, "authorization") || !strings.Contains(got, "last-event-id") {
		t.Errorf("preflight allows headers %q, want Authorization and Last-Event-ID", got)
	}
	if got := preflight(r.URL, "https://evil.example").Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("preflight from another origin allowed: %q", got)
	}
	if got := preflight(open.URL, "https://app.example").Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("relay without --cors-origins allowed a cross-origin request: %q", got)
	}

	h := relaytest.BearerHeader(relaytest.Token(t, "zowi-1"))
	h.Set("Origin", "https://app.example")
	s := relaytest.OpenSSE(t, r.URL+"/events", h)
	if s.Status != 200 || s.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("event stream from an allowed origin: %d, Access-Control-Allow-Origin %q", s.Status, s.Header.Get("Access-Control-Allow-Origin"))
	}
	for _, path := range []string{"/readyz", "/healthz"} {
		req, _ := http.NewRequest(http.MethodGet, r.URL+path, nil)
		req.Header.Set("Origin", "https://app.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example" {
			t.Errorf("GET %s from an allowed origin: Access-Control-Allow-Origin %q", path, got)
		}
	}
}
