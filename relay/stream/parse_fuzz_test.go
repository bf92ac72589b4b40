package stream_test

import (
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"testing"

	"github.com/pgrelay/pgrelay/relay/stream"
)

// FuzzParseRequest feeds hostile query strings and Last-Event-ID headers to
// the parser every transport shares. It must never panic; a rejection must
// be a 400 (ErrBadRequest); an acceptance must hold only valid topics and a
// resume id that is exactly what the client sent.
func FuzzParseRequest(f *testing.F) {
	f.Add("topic=templates", "")
	f.Add("topic=templates&topic=other&last_event_id=0000000000000001-0000000000000002", "")
	f.Add("", "0000000000000001-0000000000000002")
	f.Add("last_event_id=%00", "")
	f.Add("topic=%F0%9F%92%A5", "\x00")
	f.Add("topic=a;b&&&=&%zz", "ffffffffffffffff-ffffffffffffffff")
	topicName := regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`)
	f.Fuzz(func(t *testing.T, rawQuery, lastEventID string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/events", RawQuery: rawQuery}, Header: http.Header{}}
		if lastEventID != "" {
			r.Header["Last-Event-Id"] = []string{lastEventID}
		}
		req, err := stream.ParseRequest(r)
		if err != nil {
			if !errors.Is(err, stream.ErrBadRequest) || stream.Status(err) != http.StatusBadRequest {
				t.Fatalf("rejection %v maps to %d, want 400", err, stream.Status(err))
			}
			return
		}
		if len(req.Topics) > 64 {
			t.Fatalf("accepted %d topics", len(req.Topics))
		}
		for _, topic := range req.Topics {
			if !topicName.MatchString(topic) {
				t.Fatalf("accepted topic %q", topic)
			}
		}
		sent := lastEventID
		if sent == "" {
			sent = r.URL.Query().Get("last_event_id")
		}
		switch {
		case req.After == nil && sent != "":
			t.Fatalf("resume id %q ignored", sent)
		case req.After != nil && req.After.String() != sent:
			t.Fatalf("resume id %q parsed as %s", sent, req.After)
		}
	})
}
