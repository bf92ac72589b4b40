package relay_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// Every transport is admitted by the same gate, so a bad credential or a
// bad parameter gets the same answer on each: a status and a JSON error
// naming the problem, before any stream (or WebSocket upgrade) starts.
func TestEveryTransportRefusesBadCredentialsAndParametersWithTheSameJSONAnswer(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	valid := relaytest.Token(t, "zowi-1")
	expired := mustIssue(t, relaytest.Secret, "zowi-1", -time.Minute)
	badSig := mustIssue(t, "another-secret-0123456789", "zowi-1", time.Hour)
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {tok}} }
	cases := []struct {
		name   string
		header http.Header
		query  url.Values
		status int
		want   string
	}{
		{"no token", nil, nil, 401, "missing token"},
		{"garbage bearer", bearer("Bearer not-a-jwt"), nil, 401, "malformed"},
		{"garbage access_token with three parts", nil, url.Values{"access_token": {"abc.def.ghi"}}, 401, "invalid token"},
		{"garbage access_token", nil, url.Values{"access_token": {"garbage"}}, 401, "malformed"},
		{"bad signature", bearer("Bearer " + badSig), nil, 401, "bad signature"},
		{"expired", bearer("Bearer " + expired), nil, 401, "expired"},
		{"another scheme", bearer("Basic dXNlcjpwYXNz"), nil, 401, "Bearer"},
		{"user parameter without dev mode", nil, url.Values{"user": {"zowi-1"}}, 401, "missing token"},
		{"unknown subscriber", bearer("Bearer " + relaytest.Token(t, "nobody")), nil, 403, "not a known subscriber"},
		{"unknown subscriber in access_token", nil, url.Values{"access_token": {relaytest.Token(t, "nobody")}}, 403, "not a known subscriber"},
		{"unknown topic", bearer("Bearer " + valid), url.Values{"topic": {"nope"}}, 400, "unknown topic"},
		{"invalid topic name", bearer("Bearer " + valid), url.Values{"topic": {"Robert');DROP"}}, 400, "not a valid topic name"},
		{"malformed last_event_id", bearer("Bearer " + valid), url.Values{"last_event_id": {"42"}}, 400, "malformed event id"},
		{"malformed Last-Event-ID header", http.Header{"Authorization": {"Bearer " + valid}, "Last-Event-Id": {"zzzzzzzzzzzzzzzz-0000000000000001"}}, nil, 400, "malformed event id"},
	}
	for _, tr := range relaytest.Transports {
		for _, c := range cases {
			t.Run(tr.Name+"/"+c.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				st, err := tr.Open(ctx, nil, r.URL, streamclient.Options{Header: c.header, Query: c.query})
				if err == nil {
					st.Close()
				}
				status, msg := relaytest.Refused(t, err)
				if status != c.status || !strings.Contains(msg, c.want) {
					t.Fatalf("got %d %q, want %d with %q", status, msg, c.status, c.want)
				}
			})
		}
	}
}
