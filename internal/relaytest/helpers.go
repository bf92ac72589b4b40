package relaytest

import (
	"bytes"
	"encoding/json"
	"sync"
	"testing"
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
