package streamclient

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"

	"github.com/pgrelay/pgrelay/internal/sseframe"
)

// heartbeat is the comment the relay sends on idle streams; it says
// nothing about why a stream ends.
var heartbeat = []byte("ping")

// SSE is a stream of GET /events. Comments (the heartbeat, the relay's
// reason for ending a stream) go to OnComment.
type SSE struct {
	// Header is the answer's header (held by the body all the same).
	Header http.Header
	// OnComment, if set, receives the text of every comment line (": ping"
	// gives "ping"); the slice is valid until it returns.
	OnComment func(text []byte)

	conn net.Conn
	r    *sseframe.Reader
	// last is the last comment after the last event other than the
	// heartbeat: the relay's reason when the body ends.
	last []byte
}

// OpenSSE sends GET streamURL (http://host:port/events, perhaps with
// parameters) and returns the stream once the relay answered 200, or a
// *RejectedError with the relay's answer.
func OpenSSE(ctx context.Context, dial Dialer, streamURL string, opts Options) (*SSE, error) {
	req, err := request(ctx, streamURL, opts, "")
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	conn, _, resp, err := handshake(ctx, dial, req, opts.bufferSize())
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, refusal(conn, resp)
	}
	return &SSE{Header: resp.Header, conn: conn, r: sseframe.NewReader(resp.Body, opts.bufferSize())}, nil
}

// Next implements Stream: the next event (frames with neither data nor an
// event type are skipped). When the body ends after a comment that gives a
// reason, the error is a *ClosedError with it; io.ErrUnexpectedEOF
// otherwise.
func (s *SSE) Next() (Event, error) {
	for {
		f, err := s.r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if len(s.last) > 0 {
					return Event{}, &ClosedError{Reason: string(s.last)}
				}
				err = io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		if f.IsComment() {
			if !bytes.Equal(f.Comment, heartbeat) {
				s.last = append(s.last[:0], f.Comment...)
			}
			if s.OnComment != nil {
				s.OnComment(f.Comment)
			}
			continue
		}
		if !f.HasData && len(f.Event) == 0 {
			continue
		}
		s.last = s.last[:0]
		return Event{ID: f.ID, Type: f.Event, Data: f.Data}, nil
	}
}

// Close implements Stream.
func (s *SSE) Close() error { return s.conn.Close() }
