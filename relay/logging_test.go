package relay_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/auth"
)

// logLines returns the JSON log records in b whose msg is msg.
func logLines(t *testing.T, b *relaytest.Buffer, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func TestLogsOneLinePerStreamOpenAndCloseAndNeverTheToken(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	logs := &relaytest.Buffer{}
	log := relay.NewLogger(logs, relay.Config{LogLevel: "debug", LogFormat: "json"})
	r := relaytest.StartLogging(t, db.URL, log, func(c *relay.Config) { c.Name = "relay-under-test" })

	good := relaytest.Token(t, "zolo-1")
	forged, err := auth.Issue([]byte("some-other-secret-0123456789"), "zolo-1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, err := auth.Issue([]byte(relaytest.Secret), "zolo-1", time.Minute, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	stranger := relaytest.Token(t, "nobody-at-all")

	// A session with the token in the query string, as EventSource sends it.
	s := relaytest.OpenSSE(t, r.URL+"/events?topic=templates&access_token="+url.QueryEscape(good), nil)
	if s.Status != http.StatusOK {
		t.Fatalf("stream with a query token: %d %s", s.Status, s.Body)
	}
	relaytest.InsertTemplate(t, db, "logged", "zowi-1", "loc-1")
	s.Collect(t, 1, settle)
	s.Close()

	refusals := []struct {
		query  string
		header http.Header
		status int
	}{
		{"?access_token=" + url.QueryEscape(forged), nil, http.StatusUnauthorized},
		{"?access_token=" + url.QueryEscape(expired), nil, http.StatusUnauthorized},
		{"", relaytest.BearerHeader(forged + "x"), http.StatusUnauthorized},
		{"?access_token=" + url.QueryEscape(stranger), nil, http.StatusForbidden},
		{"?access_token=" + url.QueryEscape(good) + "&last_event_id=" + url.QueryEscape(good), nil, http.StatusBadRequest},
	}
	for _, c := range refusals {
		if got := relaytest.OpenSSE(t, r.URL+"/events"+c.query, c.header); got.Status != c.status {
			t.Errorf("GET /events%s: %d, want %d", c.query, got.Status, c.status)
		}
	}
	relaytest.Eventually(t, settle, "stream closed logged", func() bool { return len(logLines(t, logs, "stream closed")) == 1 })

	opened := logLines(t, logs, "stream opened")
	if len(opened) != 1 {
		t.Fatalf("%d \"stream opened\" lines, want 1:\n%s", len(opened), logs)
	}
	closed := logLines(t, logs, "stream closed")[0]
	for _, rec := range []map[string]any{opened[0], closed} {
		if rec["user"] != "zolo-1" || rec["transport"] != "sse" || rec["relay"] != "relay-under-test" {
			t.Errorf("%s line lacks user, transport or relay: %v", rec["msg"], rec)
		}
	}
	if closed["reason"] != "client closed" {
		t.Errorf("stream closed with reason %v, want client closed", closed["reason"])
	}
	if refused := logLines(t, logs, "stream refused"); len(refused) != len(refusals) {
		t.Errorf("%d \"stream refused\" lines, want %d", len(refused), len(refusals))
	}

	// Let the relay log its shutdown too before looking for secrets.
	r.Stop(t)
	all := logs.String()
	for name, tok := range map[string]string{"valid": good, "forged": forged, "expired": expired, "stranger's": stranger} {
		sig := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(all, tok) || strings.Contains(all, sig) {
			t.Errorf("the %s token appears in the logs:\n%s", name, all)
		}
	}
	if strings.Contains(all, relaytest.Secret) {
		t.Error("the signing secret appears in the logs")
	}
}

// Both transports admit streams through one gate: a refusal is answered and
// logged alike whichever way the client came.
func TestEveryTransportRefusesAndLogsAlike(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	logs := &relaytest.Buffer{}
	r := relaytest.StartLogging(t, db.URL, relay.NewLogger(logs, relay.Config{LogLevel: "info", LogFormat: "json"}))
	forged, err := auth.Issue([]byte("some-other-secret-0123456789"), "zolo-1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		query  string
		status int
	}{
		{"?access_token=" + url.QueryEscape(forged), http.StatusUnauthorized},
		{"?access_token=" + url.QueryEscape(relaytest.Token(t, "nobody-at-all")), http.StatusForbidden},
		{"?topic=Nope&access_token=" + url.QueryEscape(relaytest.Token(t, "zolo-1")), http.StatusBadRequest},
	}
	open := map[string]func(query string) int{
		"sse": func(query string) int { return relaytest.OpenSSE(t, r.URL+"/events"+query, nil).Status },
		"ws": func(query string) int {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.URL, "http")+"/ws"+query, nil)
			if err == nil {
				conn.CloseNow()
				return http.StatusSwitchingProtocols
			}
			return resp.StatusCode
		},
	}
	for transport, open := range open {
		for _, c := range refusals {
			if got := open(c.query); got != c.status {
				t.Errorf("%s %s: %d, want %d", transport, c.query, got, c.status)
			}
		}
	}
	byTransport := map[any]int{}
	for _, rec := range logLines(t, logs, "stream refused") {
		byTransport[rec["transport"]]++
	}
	if byTransport["sse"] != len(refusals) || byTransport["ws"] != len(refusals) {
		t.Errorf("\"stream refused\" lines by transport: %v, want %d each", byTransport, len(refusals))
	}
}
