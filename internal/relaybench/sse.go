package relaybench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// SSE opens GET /events streams. It speaks HTTP/1.1 on a raw connection with
// small buffers instead of using a full client, so that tens of thousands of
// streams fit in the load generator beside the relay: one goroutine and two
// 4 KiB buffers per stream.
type SSE struct{}

// sseBuffer is the read buffer of each layer (connection, body).
const sseBuffer = 4 << 10

// Open implements Transport.
func (SSE) Open(ctx context.Context, dial DialFunc, base *url.URL, token string, topics []string) (Stream, error) {
	u := *base
	u.Path = joinPath(base.Path, "/events")
	q := url.Values{"topic": topics}
	u.RawQuery = q.Encode()
	conn, err := dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Host, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send request to %s: %w", u.Host, err)
	}
	br := bufio.NewReaderSize(conn, sseBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read response from %s: %w", u.Host, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, &RejectedError{Status: resp.StatusCode, Body: string(bytes.TrimSpace(body))}
	}
	_ = conn.SetDeadline(time.Time{})
	return &sseStream{conn: conn, r: bufio.NewReaderSize(resp.Body, sseBuffer)}, nil
}

func joinPath(base, p string) string {
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return base + p
}

type sseStream struct {
	conn net.Conn
	r    *bufio.Reader
	// id, typ and data are reused from event to event.
	id, typ, data []byte
}

var (
	slowConsumerComment = []byte("slow consumer")
	fieldID             = []byte("id")
	fieldEvent          = []byte("event")
	fieldData           = []byte("data")
)

// Next implements Stream: it parses one event per the SSE format (fields
// until a blank line; comments and retry hints skipped).
func (s *sseStream) Next() (Event, error) {
	s.id, s.typ, s.data = s.id[:0], s.typ[:0], s.data[:0]
	hasData := false
	for {
		line, err := s.readLine()
		if err != nil {
			return Event{}, err
		}
		if len(line) == 0 {
			if hasData {
				return Event{ID: s.id, Type: s.typ, Data: s.data}, nil
			}
			continue
		}
		if line[0] == ':' {
			if bytes.Contains(line, slowConsumerComment) {
				return Event{}, fmt.Errorf("%w (%s)", ErrSlowConsumer, bytes.TrimSpace(line[1:]))
			}
			continue
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		switch {
		case bytes.Equal(name, fieldID):
			s.id = append(s.id, value...)
		case bytes.Equal(name, fieldEvent):
			s.typ = append(s.typ, value...)
		case bytes.Equal(name, fieldData):
			if hasData {
				s.data = append(s.data, '\n')
			}
			s.data = append(s.data, value...)
			hasData = true
		}
	}
}

// readLine returns one line without its end of line, however long: rows of
// any size are delivered whole.
func (s *sseStream) readLine() ([]byte, error) {
	line, err := s.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		long := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			line, err = s.r.ReadSlice('\n')
			long = append(long, line...)
		}
		line = long
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read event stream: %w", err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func (s *sseStream) Close() error { return s.conn.Close() }
