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

	"github.com/pgrelay/pgrelay/internal/sseframe"
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
	return &sseStream{conn: conn, r: sseframe.NewReader(resp.Body, sseBuffer)}, nil
}

func joinPath(base, p string) string {
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return base + p
}

type sseStream struct {
	conn net.Conn
	r    *sseframe.Reader
}

var slowConsumerComment = []byte("slow consumer")

// Next implements Stream: one event (comments and frames without data are
// skipped; the slow-consumer notice is an error).
func (s *sseStream) Next() (Event, error) {
	for {
		f, err := s.r.Next()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		if f.IsComment() {
			if bytes.Contains(f.Comment, slowConsumerComment) {
				return Event{}, fmt.Errorf("%w (%s)", ErrSlowConsumer, bytes.TrimSpace(f.Comment))
			}
			continue
		}
		if f.HasData {
			return Event{ID: f.ID, Type: f.Event, Data: f.Data}, nil
		}
	}
}

func (s *sseStream) Close() error { return s.conn.Close() }
