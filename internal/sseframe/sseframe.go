// Package sseframe reads the Server-Sent Events wire format the way a
// browser's EventSource does: "field: value" lines, an event dispatched at a
// blank line, comments on lines that start with a colon. It is the one
// parser of pgrelay's own clients: the test clients, the invariant checker
// and the benchmark.
package sseframe

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// Frame is one event or one comment. Its slices are valid until the next
// call to Next.
type Frame struct {
	// Comment is the text of a comment line (": ping" gives "ping"); nil
	// for an event.
	Comment []byte
	// ID, Event and Data are the event's fields; HasID and HasData tell an
	// empty field from a missing one.
	ID, Event, Data []byte
	HasID, HasData  bool
}

// IsComment reports whether f is a comment line rather than an event.
func (f Frame) IsComment() bool { return f.Comment != nil }

// Reader reads frames from an event stream.
type Reader struct {
	r              *bufio.Reader
	id, event      []byte
	data, long     []byte
	hasID, hasData bool
}

// NewReader reads from r through a buffer of size bytes; longer lines are
// read whole all the same (rows of any size).
func NewReader(r io.Reader, size int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, size)}
}

// Next returns the next comment or event. A blank line with no field before
// it is skipped, as is the retry field. At the end of the stream it returns
// the reader's error (io.EOF for a clean end), dropping an event cut short.
func (r *Reader) Next() (Frame, error) {
	r.id, r.event, r.data = r.id[:0], r.event[:0], r.data[:0]
	r.hasID, r.hasData = false, false
	fields := false
	for {
		line, err := r.line()
		if err != nil {
			return Frame{}, err
		}
		if len(line) == 0 {
			if fields {
				return Frame{ID: r.id, Event: r.event, Data: r.data, HasID: r.hasID, HasData: r.hasData}, nil
			}
			continue
		}
		if line[0] == ':' {
			return Frame{Comment: bytes.TrimPrefix(line[1:], []byte(" "))}, nil
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "id":
			r.id, r.hasID, fields = append(r.id[:0], value...), true, true
		case "event":
			r.event, fields = append(r.event[:0], value...), true
		case "data":
			if r.hasData {
				r.data = append(r.data, '\n')
			}
			r.data, r.hasData, fields = append(r.data, value...), true, true
		}
	}
}

// line returns one line without its end of line, however long.
func (r *Reader) line() ([]byte, error) {
	line, err := r.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		r.long = append(r.long[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = r.r.ReadSlice('\n')
			r.long = append(r.long, line...)
		}
		line = r.long
	}
	if err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read event stream: %w", err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
