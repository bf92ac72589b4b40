package sseframe_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/internal/sseframe"
)

func TestFramesAreReadAsABrowserReadsThem(t *testing.T) {
	stream := "retry: 2000\n\n" +
		": ping\n\n" +
		"id: 1\nevent: templates\ndata: {\"a\":1}\n\n" +
		"data: line one\r\ndata: line two\r\n\r\n" +
		"id:2\nevent:reset\ndata:\n\n" +
		"data: " + strings.Repeat("x", 100) + "\n\n" +
		"id: 3\ndata: cut short"
	r := sseframe.NewReader(strings.NewReader(stream), 16)
	type want struct {
		comment, id, event, data string
		hasID, hasData           bool
	}
	for i, w := range []want{
		{comment: "ping"},
		{id: "1", event: "templates", data: `{"a":1}`, hasID: true, hasData: true},
		{data: "line one\nline two", hasData: true},
		{id: "2", event: "reset", data: "", hasID: true, hasData: true},
		{data: strings.Repeat("x", 100), hasData: true},
	} {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		got := want{string(f.Comment), string(f.ID), string(f.Event), string(f.Data), f.HasID, f.HasData}
		if got != w || f.IsComment() != (w.comment != "") {
			t.Errorf("frame %d = %+v, want %+v", i, got, w)
		}
	}
	if f, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last whole event: %+v, %v; want io.EOF, the cut event dropped", f, err)
	}
}
