package walcapture

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// Captured text goes into the log through relay.append_captured's jsonb
// argument: whatever a column holds must come out of the JSON as the same
// string json.Marshal would give.
func TestTextColumnsBecomeTheJSONStringsOfTheirText(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and backslash \ and slash /`, "line\nfeed\r\ttab\b\f",
		"\x01\x1f\x7f control", "<script>&amp;</script>", "ünïcödé, 日本語, emoji 🎉, \u2028\u2029",
		"invalid \xff\xfe utf-8 \xc3", "ends in a backslash \\",
	} {
		got := appendJSONString([]byte("prefix"), []byte(s))
		if string(got[:6]) != "prefix" {
			t.Fatalf("%q: the prefix was overwritten: %q", s, got)
		}
		var back, want string
		if err := json.Unmarshal(got[6:], &back); err != nil {
			t.Fatalf("%q became %s, not a JSON string: %v", s, got[6:], err)
		}
		m, _ := json.Marshal(s)
		_ = json.Unmarshal(m, &want)
		if back != want {
			t.Errorf("%q came back as %q; json.Marshal gives %q", s, back, want)
		}
	}
}

func TestARowBecomesAnObjectOfItsColumnsWithJSONColumnsAsTheyAre(t *testing.T) {
	rel := &relation{columns: []column{{key: `"id"`}, {key: `"doc"`, json: true}, {key: `"note"`}, {key: `"bad"`, json: true}}}
	row := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("42")},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(`{"a": [1, "x"]}`)},
		{DataType: pglogrepl.TupleDataTypeNull},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(`not json`)},
	}}
	got, err := appendRowJSON([]byte("keep"), rel, row)
	if err != nil {
		t.Fatal(err)
	}
	want := `keep{"id":"42","doc":{"a": [1, "x"]},"note":null,"bad":"not json"}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestAfterALargeBatchTheNextGathersForTheWholeWindowAndAfterASmallOneUntilAPause(t *testing.T) {
	d := &decoder{c: New(Config{Gather: 200 * time.Microsecond}, nil)}
	first := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d.firstAt = first
	now := first.Add(time.Millisecond)

	d.lastBatch = 1 // a trickle: appended once the stream pauses
	if got, want := d.appendAt(now), now.Add(200*time.Microsecond); !got.Equal(want) {
		t.Fatalf("after a batch of 1: append at %v, want %v (the pause)", got.Sub(first), want.Sub(first))
	}
	late := first.Add(maxGather - 50*time.Microsecond)
	if got, want := d.appendAt(late), first.Add(maxGather); !got.Equal(want) {
		t.Fatalf("after a batch of 1, near the window's end: append at %v, want %v", got.Sub(first), want.Sub(first))
	}
	d.lastBatch = busyRows // a high rate: pauses do not cut the batch short
	if got, want := d.appendAt(now), first.Add(maxGather); !got.Equal(want) {
		t.Fatalf("after a batch of %d: append at %v, want %v (the whole window)", busyRows, got.Sub(first), want.Sub(first))
	}
}

func TestByDefaultReceivedTransactionsAreAppendedWithoutWaitingForAPause(t *testing.T) {
	d := &decoder{c: New(Config{}, nil)}
	first := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d.firstAt = first
	now := first.Add(time.Millisecond)
	d.lastBatch = 1
	// A deadline of now has passed by the time the stream is read: only a
	// message already received is taken before the append.
	if got := d.appendAt(now); !got.Equal(now) {
		t.Fatalf("after a batch of 1: append at %v after the first, want %v (no pause)", got.Sub(first), now.Sub(first))
	}
	d.lastBatch = busyRows
	if got, want := d.appendAt(now), first.Add(maxGather); !got.Equal(want) {
		t.Fatalf("after a batch of %d: append at %v, want %v (the whole window)", busyRows, got.Sub(first), want.Sub(first))
	}
}
