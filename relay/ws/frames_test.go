package ws

import (
	"bytes"
	"errors"
	"testing"

	"github.com/gobwas/ws"
)

// clientFrame is a frame as a client sends it: masked.
func clientFrame(op ws.OpCode, fin bool, payload []byte) []byte {
	f := ws.MaskFrame(ws.NewFrame(op, fin, append([]byte(nil), payload...)))
	return ws.MustCompileFrame(f)
}

// feedInPieces feeds b to r size bytes at a time, as a socket may deliver
// it, and returns the control frames seen and the first error.
func feedInPieces(r *frameReader, b []byte, size int) ([]control, error) {
	var got []control
	on := func(f control) error {
		got = append(got, control{op: f.op, payload: append([]byte(nil), f.payload...)})
		return nil
	}
	for len(b) > 0 {
		n := min(size, len(b))
		if err := r.feed(b[:n], on); err != nil {
			return got, err
		}
		b = b[n:]
	}
	return got, nil
}

func TestClientFramesAreParsedWhateverPiecesTheSocketDeliversThemIn(t *testing.T) {
	var stream []byte
	stream = append(stream, clientFrame(ws.OpText, false, []byte(`{"hel`))...)
	stream = append(stream, clientFrame(ws.OpPing, true, []byte("in between fragments"))...)
	stream = append(stream, clientFrame(ws.OpContinuation, true, []byte(`lo":1}`))...)
	stream = append(stream, clientFrame(ws.OpBinary, true, bytes.Repeat([]byte{0xff}, 300))...)
	stream = append(stream, clientFrame(ws.OpPong, true, nil)...)
	stream = append(stream, clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))...)
	for _, size := range []int{1, 2, 3, 7, 13, 64, len(stream)} {
		var r frameReader
		got, err := feedInPieces(&r, stream, size)
		if err != nil {
			t.Fatalf("pieces of %d bytes: %v", size, err)
		}
		want := []control{
			{ws.OpPing, []byte("in between fragments")},
			{ws.OpPong, nil},
			{ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")},
		}
		if len(got) != len(want) {
			t.Fatalf("pieces of %d bytes: %d control frames, want %d: %q", size, len(got), len(want), got)
		}
		for i := range want {
			if got[i].op != want[i].op || !bytes.Equal(got[i].payload, want[i].payload) {
				t.Errorf("pieces of %d bytes: control frame %d is %v %q, want %v %q", size, i, got[i].op, got[i].payload, want[i].op, want[i].payload)
			}
		}
	}
}

func TestClientFramesThatBreakTheProtocolAreRefusedWithTheirCloseCode(t *testing.T) {
	unmasked := ws.MustCompileFrame(ws.NewTextFrame([]byte("hi")))
	cases := []struct {
		name     string
		frames   [][]byte
		wantCode uint16
	}{
		{"message over 4 KiB", [][]byte{clientFrame(ws.OpText, true, make([]byte, maxClientMessage+1))}, CloseMessageTooBig},
		{"fragments over 4 KiB together", [][]byte{
			clientFrame(ws.OpBinary, false, make([]byte, 3000)),
			clientFrame(ws.OpContinuation, true, make([]byte, 3000)),
		}, CloseMessageTooBig},
		{"unmasked frame", [][]byte{unmasked}, CloseProtocolError},
		{"continuation without a message", [][]byte{clientFrame(ws.OpContinuation, true, []byte("x"))}, CloseProtocolError},
		{"new message inside a fragmented one", [][]byte{
			clientFrame(ws.OpText, false, []byte("a")),
			clientFrame(ws.OpText, true, []byte("b")),
		}, CloseProtocolError},
		{"fragmented ping", [][]byte{clientFrame(ws.OpPing, false, []byte("x"))}, CloseProtocolError},
		{"reserved opcode", [][]byte{clientFrame(ws.OpCode(0x3), true, nil)}, CloseProtocolError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r frameReader
			_, err := feedInPieces(&r, bytes.Join(tc.frames, nil), 5)
			var ce *clientError
			if !errors.As(err, &ce) || ce.code != tc.wantCode {
				t.Fatalf("got %v, want a client error with close code %d", err, tc.wantCode)
			}
		})
	}
}

func TestExactly4KiBIsAccepted(t *testing.T) {
	var r frameReader
	_, err := feedInPieces(&r, clientFrame(ws.OpText, true, make([]byte, maxClientMessage)), 1000)
	if err != nil {
		t.Fatalf("a message of exactly %d bytes: %v, want it accepted", maxClientMessage, err)
	}
}

func TestACloseFrameIsAnsweredWithItsCodeOrRefusedIfMalformed(t *testing.T) {
	cases := []struct {
		name      string
		payload   []byte
		wantReply []byte // nil: refused
	}{
		{"normal closure", ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"), ws.NewCloseFrameBody(ws.StatusNormalClosure, "")},
		{"application code", ws.NewCloseFrameBody(4321, ""), ws.NewCloseFrameBody(4321, "")},
		{"no code", nil, []byte{}},
		{"one byte", []byte{3}, nil},
		{"reserved code 1005", ws.NewCloseFrameBody(ws.StatusNoStatusRcvd, ""), nil},
		{"reason not UTF-8", append(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), 0xff, 0xfe), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reply, err := closeReply(tc.payload)
			if tc.wantReply == nil {
				var ce *clientError
				if !errors.As(err, &ce) || ce.code != CloseProtocolError {
					t.Fatalf("got %v, want refusal with %d", err, CloseProtocolError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := ws.MustCompileFrame(ws.NewCloseFrame(tc.wantReply))
			if !bytes.Equal(reply, want) {
				t.Errorf("reply % x, want % x", reply, want)
			}
		})
	}
}

func TestTextHeadersMatchTheLibrarysEncoding(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 20} {
		var want bytes.Buffer
		if err := ws.WriteHeader(&want, ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(n)}); err != nil {
			t.Fatal(err)
		}
		if got := textHeader(nil, n); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("header for %d bytes % x, want % x", n, got, want.Bytes())
		}
	}
}
