package ws

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/gobwas/ws"
)

// maxDataHeader is the largest header of a frame the relay sends (unmasked).
const maxDataHeader = 10

// textHeader appends the header of a final, unmasked text frame of n bytes
// to dst (RFC 6455 §5.2). It is written here rather than with
// ws.WriteHeader, whose io.Writer makes its scratch buffer escape: that
// would be an allocation per delivery.
func textHeader(dst []byte, n int) []byte {
	const finText = 0x80 | byte(ws.OpText)
	switch {
	case n <= 125:
		return append(dst, finText, byte(n))
	case n <= 0xffff:
		return append(dst, finText, 126, byte(n>>8), byte(n))
	default:
		u := uint64(n)
		return append(dst, finText, 127, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32),
			byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
	}
}

// Frames the relay sends as they are. The ping carries no payload: any pong
// proves the client is there.
var (
	pingFrame = ws.MustCompileFrame(ws.NewPingFrame(nil))
)

// closeFrame is a close frame with code and reason.
func closeFrame(code uint16, reason string) []byte {
	return ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(code), reason)))
}

// errTooBig ends a connection whose client sent a message over the limit
// (close 1009).
var errTooBig = fmt.Errorf("client message over %d bytes", maxClientMessage)

// clientError is a frame the client should not have sent, with the code to
// close the connection with.
type clientError struct {
	code uint16
	err  error
}

func (e *clientError) Error() string { return "client broke the protocol: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// frameReader parses what a client sends, in whatever pieces the socket
// delivers it, keeping between pieces only the header in progress and the
// position in the current frame: data messages are counted and dropped
// (the relay expects none), control frames (at most 125 bytes) are
// gathered and handed over whole, unmasked.
type frameReader struct {
	hdr  [ws.MaxHeaderSize]byte
	hdrN int

	inFrame bool
	h       ws.Header
	left    int64  // payload bytes of h still to come
	ctl     []byte // payload of a control frame so far

	fragmented bool  // inside a data message sent in several frames
	msgLen     int64 // bytes of the current data message
}

// control is a whole control frame from the client.
type control struct {
	op      ws.OpCode
	payload []byte // unmasked; valid until the next call of feed
}

// feed parses b and calls on for each control frame completed in it. It
// stops at the first error: a *clientError, or on's.
func (r *frameReader) feed(b []byte, on func(control) error) error {
	for len(b) > 0 {
		if !r.inFrame {
			n, err := r.readHeader(b)
			if err != nil {
				return err
			}
			b = b[n:]
			if !r.inFrame {
				return nil // the header continues in the next piece
			}
			if r.left > 0 {
				continue
			}
		} else {
			n := int(min(int64(len(b)), r.left))
			if r.h.OpCode.IsControl() {
				r.ctl = append(r.ctl, b[:n]...)
			}
			r.left -= int64(n)
			b = b[n:]
			if r.left > 0 {
				return nil
			}
		}
		// A frame is complete.
		r.inFrame = false
		if r.h.OpCode.IsControl() {
			payload := r.ctl
			r.ctl = r.ctl[:0]
			ws.Cipher(payload, r.h.Mask, 0)
			if err := on(control{op: r.h.OpCode, payload: payload}); err != nil {
				return err
			}
		}
	}
	return nil
}

// readHeader takes what it needs of b for the header in progress and
// returns how much that was; once the header is whole it checks it and
// starts the frame.
func (r *frameReader) readHeader(b []byte) (int, error) {
	used := 0
	for {
		need := headerSize(r.hdr[:r.hdrN])
		if r.hdrN >= need {
			break
		}
		if used == len(b) {
			return used, nil
		}
		n := copy(r.hdr[r.hdrN:need], b[used:])
		r.hdrN += n
		used += n
	}
	h, err := ws.ReadHeader(bytes.NewReader(r.hdr[:r.hdrN]))
	r.hdrN = 0
	if err != nil {
		return used, &clientError{CloseProtocolError, err}
	}
	state := ws.StateServerSide
	if r.fragmented {
		state = state.Set(ws.StateFragmented)
	}
	if err := ws.CheckHeader(h, state); err != nil {
		return used, &clientError{CloseProtocolError, err}
	}
	if h.OpCode.IsData() { // text, binary or continuation
		if h.OpCode != ws.OpContinuation {
			r.msgLen = 0
		}
		r.msgLen += h.Length
		r.fragmented = !h.Fin
		if r.msgLen > maxClientMessage {
			return used, &clientError{CloseMessageTooBig, errTooBig}
		}
	}
	r.h, r.left, r.inFrame = h, h.Length, true
	return used, nil
}

// headerSize is how long the header that begins with b is: 2 bytes until
// the second byte says more.
func headerSize(b []byte) int {
	if len(b) < 2 {
		return 2
	}
	n := 2
	if b[1]&0x80 != 0 {
		n += 4 // mask
	}
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	return n
}

// closeReply checks the payload of a client's close frame and returns the
// close frame that answers it: the same code, no reason (RFC 6455 §5.5.1).
func closeReply(payload []byte) ([]byte, error) {
	switch len(payload) {
	case 0:
		return ws.MustCompileFrame(ws.NewCloseFrame(nil)), nil
	case 1:
		return nil, &clientError{CloseProtocolError, errors.New("close frame with a one-byte payload")}
	}
	code, reason := ws.ParseCloseFrameData(payload)
	if err := ws.CheckCloseFrameData(code, reason); err != nil {
		return nil, &clientError{CloseProtocolError, err}
	}
	return closeFrame(uint16(code), ""), nil
}

// pongFrame answers a ping with its payload.
func pongFrame(payload []byte) []byte {
	return ws.MustCompileFrame(ws.NewPongFrame(payload))
}
