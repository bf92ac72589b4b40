package streamclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/pgrelay/pgrelay/internal/wsmessage"
)

// handshakeGUID is RFC 6455's constant of the Sec-WebSocket-Accept answer.
const handshakeGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// writeTimeout bounds a frame the client sends (pongs, close frames, test
// messages).
const writeTimeout = 10 * time.Second

// WS is a stream of GET /ws: one text message per event, {"id","topic",
// "data"}, or {"type":"reset",…}. Frames are read with github.com/gobwas/ws;
// pings are answered from Next.
type WS struct {
	conn       net.Conn
	r          *bufio.Reader
	maxMessage int
	// buf holds the current message, reused from message to message.
	buf []byte
	// writeMu keeps a test's own messages apart from the pongs Next sends.
	writeMu sync.Mutex
}

// OpenWS upgrades GET streamURL (http:// or ws://host:port/ws, perhaps
// with parameters) and returns the stream once the relay answered 101, or
// a *RejectedError with the relay's answer.
func OpenWS(ctx context.Context, dial Dialer, streamURL string, opts Options) (*WS, error) {
	req, err := request(ctx, streamURL, opts, "last_event_id")
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	conn, br, resp, err := handshake(ctx, dial, req, opts.bufferSize())
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, refusal(conn, resp)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), acceptKey(key); got != want {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake with %s: Sec-WebSocket-Accept %q, want %q", req.URL.Host, got, want)
	}
	return &WS{conn: conn, r: br, maxMessage: opts.maxMessage()}, nil
}

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + handshakeGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// Next implements Stream. The relay writes id, topic and data in that
// order, which is read without a JSON decoder; any other message is
// decoded as JSON.
func (s *WS) Next() (Event, error) {
	b, err := s.ReadMessage()
	if err != nil {
		return Event{}, err
	}
	if rest, ok := bytes.CutPrefix(b, []byte(`{"id":"`)); ok {
		if id, rest, ok := bytes.Cut(rest, []byte(`","topic":"`)); ok {
			if topic, rest, ok := bytes.Cut(rest, []byte(`","data":`)); ok && len(rest) > 0 && rest[len(rest)-1] == '}' {
				return Event{ID: id, Type: topic, Data: rest[:len(rest)-1]}, nil
			}
		}
	}
	m, err := wsmessage.Decode(b)
	if err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Type != "" {
		return Event{ID: []byte(m.ID), Type: []byte(m.Type), Data: m.Data}, nil
	}
	return Event{ID: []byte(m.ID), Type: []byte(m.Topic), Data: m.Data}, nil
}

// ReadMessage returns the next data message whole, as sent; it is valid
// until the next read. Pings are answered on the way; a close frame is
// answered and returned as a *ClosedError.
func (s *WS) ReadMessage() ([]byte, error) {
	s.buf = s.buf[:0]
	for {
		h, err := ws.ReadHeader(s.r)
		if err != nil {
			return nil, fmt.Errorf("read websocket: %w", err)
		}
		if h.Masked {
			return nil, fmt.Errorf("read websocket: the relay sent a masked frame")
		}
		start := len(s.buf)
		if h.Length > int64(s.maxMessage-start) {
			return nil, fmt.Errorf("read websocket: message of more than %d bytes", s.maxMessage)
		}
		s.buf = slices.Grow(s.buf, int(h.Length))[:start+int(h.Length)]
		if _, err := io.ReadFull(s.r, s.buf[start:]); err != nil {
			return nil, fmt.Errorf("read websocket: %w", err)
		}
		switch h.OpCode {
		case ws.OpPing:
			payload := append([]byte(nil), s.buf[start:]...)
			s.buf = s.buf[:start]
			if err := s.write(ws.OpPong, payload); err != nil {
				return nil, err
			}
			continue
		case ws.OpPong:
			s.buf = s.buf[:start]
			continue
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(s.buf[start:])
			_ = s.write(ws.OpClose, ws.NewCloseFrameBody(code, ""))
			return nil, &ClosedError{Code: int(code), Reason: reason}
		}
		if h.Fin {
			return s.buf, nil
		}
	}
}

// WriteText sends a text message to the relay (which reads and discards
// what clients send).
func (s *WS) WriteText(p []byte) error { return s.write(ws.OpText, p) }

// CloseWith sends a close frame with code and reason, then drops the
// connection without waiting for the relay's answer.
func (s *WS) CloseWith(code int, reason string) error {
	err := s.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), reason))
	if cerr := s.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close implements Stream.
func (s *WS) Close() error { return s.conn.Close() }

// write sends one frame, masked as a client must.
func (s *WS) write(op ws.OpCode, payload []byte) error {
	b, err := ws.CompileFrame(ws.MaskFrame(ws.NewFrame(op, true, payload)))
	if err == nil {
		s.writeMu.Lock()
		_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err = s.conn.Write(b)
		s.writeMu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("write websocket %v frame: %w", op, err)
	}
	return nil
}
