package relaytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// TemplateRow is the data of a templates event.
type TemplateRow struct {
	ID               string   `json:"id"`
	Name             string   `json:"name"`
	ShareLocationIDs []string `json:"share_location_ids"`
	CreatedBy        string   `json:"created_by"`
	CreatedAt        string   `json:"created_at"`
}

// TemplateNames returns the names of the templates events carry, failing the
// test on an event of another topic or data that is not a template row.
func TemplateNames(t testing.TB, events []Event) []string {
	t.Helper()
	var out []string
	for _, e := range events {
		if e.Event != "templates" {
			t.Fatalf("event of topic %q, want templates (id %s)", e.Event, e.ID)
		}
		var row TemplateRow
		if err := json.Unmarshal([]byte(e.Data), &row); err != nil {
			t.Fatalf("event data is not a template row: %v (id %s)", err, e.ID)
		}
		out = append(out, row.Name)
	}
	return out
}

// Buffer is a bytes.Buffer that a relay's (or the demo's) goroutines may
// write while a test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// SeedUsers are the subscribers of the seed story, of every kind and both
// orgs.
var SeedUsers = []string{"zowi-1", "zowi-2", "zolo-1", "zewi-1", "zelo-1", "zowi-9", "zolo-9"}

// InsertSeedTemplates inserts the seed scenario's templates, in order, and
// returns, per user of SeedUsers, the names CONTRACT §4 says it receives, in
// that order.
func InsertSeedTemplates(t testing.TB, db *pgtest.DB) map[string][]string {
	t.Helper()
	InsertTemplate(t, db, "t1 berlin by lena", "zolo-1", "loc-1")
	InsertTemplate(t, db, "t2 paris by olga", "zowi-1", "loc-2")
	InsertTemplate(t, db, "t3 nowhere by emil", "zewi-1")
	InsertTemplate(t, db, "t4 rome+berlin by elsa", "zelo-1", "loc-3", "loc-1")
	InsertTemplate(t, db, "t5 oslo by ines", "zolo-9", "loc-9")
	// Shared with another org's location: refused, and delivered to nobody.
	if _, err := db.Pool.Exec(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t6 oslo by lena', '{loc-9}', 'zolo-1')`); err == nil {
		t.Fatal("a template shared with another org's location was accepted")
	}
	InsertTemplate(t, db, "t6 oslo by ivan", "zowi-9", "loc-9")
	return map[string][]string{
		"zowi-1": {"t1 berlin by lena", "t3 nowhere by emil", "t4 rome+berlin by elsa"},
		"zowi-2": {"t1 berlin by lena", "t2 paris by olga", "t3 nowhere by emil", "t4 rome+berlin by elsa"},
		"zolo-1": {"t4 rome+berlin by elsa"},
		"zewi-1": {"t1 berlin by lena", "t2 paris by olga", "t4 rome+berlin by elsa"},
		"zelo-1": {"t2 paris by olga"},
		"zowi-9": {"t5 oslo by ines"},
		"zolo-9": {"t6 oslo by ivan"},
	}
}

// refusal returns err as the relay's refusal, failing the test if it is
// not one.
func refusal(t testing.TB, err error) *streamclient.RejectedError {
	t.Helper()
	var rej *streamclient.RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("stream opened (%v), want a refusal", err)
	}
	return rej
}

// errorMessage checks that a refusal is the relay's JSON error,
// {"error": "..."}, and returns the message.
func errorMessage(t testing.TB, header http.Header, body string) string {
	t.Helper()
	if ct := header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("refusal's Content-Type %q, want application/json", ct)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(body), &e); err != nil || len(e) != 1 || e["error"] == "" {
		t.Fatalf("refusal's body %q, want {\"error\": \"...\"}", body)
	}
	return e["error"]
}

// Refused checks that err is the relay's refusal of a stream, answered with
// its JSON error, and returns the status and the message.
func Refused(t testing.TB, err error) (status int, message string) {
	t.Helper()
	rej := refusal(t, err)
	return rej.Status, errorMessage(t, rej.Header, rej.Body)
}
