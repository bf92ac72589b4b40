package filter_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/pgrelay/pgrelay/relay/filter"
)

// FuzzParseChange feeds arbitrary pgrelay_filters payloads (anyone who can
// NOTIFY can send one). Parsing must never panic, and whatever does not
// name subscribers in the documented form must mean "everyone": refreshing
// too much is safe, refreshing too little leaves stale filters.
func FuzzParseChange(f *testing.F) {
	f.Add(`{"subscribers":["zowi-1","zolo-1"]}`)
	f.Add(`{"all":true}`)
	f.Add(`{}`)
	f.Add(`null`)
	f.Add(`{"subscribers":null}`)
	f.Add(`{"subscriber":["x"]}`)
	f.Add(`{"subscribers":"zowi-1"}`)
	f.Add(`{"subscribers":[1,2]}`)
	f.Add("\x00")
	f.Fuzz(func(t *testing.T, payload string) {
		c := filter.ParseChange(payload)
		if c.All {
			return
		}
		// Keys match as encoding/json matches them (case-insensitively).
		var doc struct {
			Subscribers []string `json:"subscribers"`
		}
		if err := json.Unmarshal([]byte(payload), &doc); err != nil {
			t.Fatalf("payload %q is not a JSON object naming subscribers but did not mean everyone", payload)
		}
		subs := doc.Subscribers
		if subs == nil {
			t.Fatalf("payload %q names no subscribers array but did not mean everyone (got %+v)", payload, c)
		}
		if !slices.Equal(c.Subscribers, subs) {
			t.Fatalf("payload %q: subscribers %q, want %q", payload, c.Subscribers, subs)
		}
	})
}
