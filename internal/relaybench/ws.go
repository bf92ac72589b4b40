package relaybench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/pgrelay/pgrelay/internal/wsmessage"
)

// WebSocket opens GET /ws streams: one text message per event,
// {"id":"…","topic":"…","data":{…row…}}, the token in access_token. Like
// SSE, it speaks the protocol on a raw connection with small buffers (one
// goroutine and a 4 KiB read buffer per stream), so that the load generator
// costs the same per stream whichever transport it measures; frames are read
// with github.com/gobwas/ws.
type WebSocket struct{}

// Open implements Transport.
func (WebSocket) Open(ctx context.Context, dial DialFunc, base *url.URL, token string, topics []string) (Stream, error) {
	u := *base
	u.Path = joinPath(base.Path, "/ws")
	u.RawQuery = url.Values{"topic": topics, "access_token": {token}}.Encode()
	conn, err := dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Host, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("build request: %w", err)
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(nonce[:]))
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send handshake to %s: %w", u.Host, err)
	}
	br := bufio.NewReaderSize(conn, sseBuffer)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read handshake response from %s: %w", u.Host, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, &RejectedError{Status: resp.StatusCode, Body: string(bytes.TrimSpace(body))}
	}
	_ = conn.SetDeadline(time.Time{})
	return &wsStream{conn: conn, r: br}, nil
}

type wsStream struct {
	conn net.Conn
	r    *bufio.Reader
	// buf holds the current message; reused from message to message.
	buf []byte
}

// Next implements Stream. Pings are answered; a close frame ends the
// stream, as ErrSlowConsumer if its reason says so.
func (s *wsStream) Next() (Event, error) {
	s.buf = s.buf[:0]
	for {
		h, err := ws.ReadHeader(s.r)
		if err != nil {
			return Event{}, fmt.Errorf("read websocket: %w", err)
		}
		start := len(s.buf)
		s.buf = slices.Grow(s.buf, int(h.Length))[:start+int(h.Length)]
		if _, err := io.ReadFull(s.r, s.buf[start:]); err != nil {
			return Event{}, fmt.Errorf("read websocket: %w", err)
		}
		switch h.OpCode {
		case ws.OpPing:
			payload := append([]byte(nil), s.buf[start:]...)
			s.buf = s.buf[:start]
			if err := s.writeControl(ws.OpPong, payload); err != nil {
				return Event{}, err
			}
			continue
		case ws.OpPong:
			s.buf = s.buf[:start]
			continue
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(s.buf[start:])
			_ = s.writeControl(ws.OpClose, ws.NewCloseFrameBody(code, ""))
			if strings.Contains(reason, "slow") {
				return Event{}, fmt.Errorf("%w (%s)", ErrSlowConsumer, reason)
			}
			return Event{}, fmt.Errorf("read websocket: closed with %d %q", code, reason)
		}
		if !h.Fin {
			continue
		}
		return s.event()
	}
}

// event decodes the message in buf. The relay writes id, topic and data in
// that order, which is read without a JSON decoder; anything else is
// decoded as JSON.
func (s *wsStream) event() (Event, error) {
	b := s.buf
	if rest, ok := bytes.CutPrefix(b, []byte(`{"id":"`)); ok {
		if id, rest, ok := bytes.Cut(rest, []byte(`","topic":"`)); ok {
			if topic, rest, ok := bytes.Cut(rest, []byte(`","data":`)); ok && len(rest) > 0 && rest[len(rest)-1] == '}' {
				return Event{ID: id, Type: topic, Data: rest[:len(rest)-1]}, nil
			}
		}
	}
	m, err := wsmessage.Decode(b)
	if err != nil {
		return Event{}, err
	}
	if m.Type != "" {
		return Event{ID: []byte(m.ID), Type: []byte(m.Type), Data: m.Data}, nil
	}
	return Event{ID: []byte(m.ID), Type: []byte(m.Topic), Data: m.Data}, nil
}

// writeControl sends a control frame, masked as a client must.
func (s *wsStream) writeControl(op ws.OpCode, payload []byte) error {
	f := ws.MaskFrame(ws.NewFrame(op, true, payload))
	b, err := ws.CompileFrame(f)
	if err == nil {
		_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err = s.conn.Write(b)
	}
	if err != nil {
		return fmt.Errorf("write websocket %v frame: %w", op, err)
	}
	return nil
}

func (s *wsStream) Close() error { return s.conn.Close() }
