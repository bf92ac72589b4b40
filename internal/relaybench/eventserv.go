package relaybench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// EventservChannel is the PostgreSQL channel the pg_eventserv transport
// listens to. bench/eventserv-compare.sh installs a trigger on
// public.templates that sends every new row to it as JSON.
const EventservChannel = "relaybench_templates"

// Eventserv opens streams on pg_eventserv (github.com/CrunchyData/pg_eventserv),
// for comparing pgrelay with it in the same session. pg_eventserv forwards
// every NOTIFY of a channel to every WebSocket on /listen/<channel>, with
// no filter, no authentication and no event ids, so runs with it need
// --audience equal to --subscribers, and order is not checked: each message
// is given the next number of its stream as its id.
type Eventserv struct{}

// Open implements Transport; token, topics and lastEventID are ignored
// (pg_eventserv has no ids to resume after).
func (Eventserv) Open(ctx context.Context, dial streamclient.Dialer, base *url.URL, _ string, _ []string, _ string) (streamclient.Stream, error) {
	u := *base
	u.Scheme = "ws"
	u = *u.JoinPath("listen", EventservChannel)
	d := ws.Dialer{NetDial: dial, ReadBufferSize: streamclient.DefaultBufferSize}
	conn, br, _, err := d.Dial(ctx, u.String())
	if err != nil {
		var status ws.StatusError
		if errors.As(err, &status) {
			return nil, &streamclient.RejectedError{Status: int(status), Body: err.Error()}
		}
		return nil, fmt.Errorf("open %s: %w", u.String(), err)
	}
	var r io.Reader = conn
	if br != nil {
		// It holds bytes the server sent right behind its handshake
		// response, and reads the connection once they are used up.
		r = br
	}
	return &eventservStream{conn: conn, rw: bufio.NewReadWriter(bufio.NewReaderSize(r, streamclient.DefaultBufferSize), bufio.NewWriterSize(conn, 256))}, nil
}

type eventservStream struct {
	conn net.Conn
	rw   *bufio.ReadWriter
	n    int
	id   []byte
}

// Next implements Stream: pings (pg_eventserv sends one every 2 s) are
// answered by wsutil, which hands back only data messages.
func (s *eventservStream) Next() (streamclient.Event, error) {
	for {
		data, op, err := wsutil.ReadServerData(s)
		if err != nil {
			return streamclient.Event{}, fmt.Errorf("read pg_eventserv websocket: %w", err)
		}
		if op != ws.OpText {
			continue
		}
		s.n++
		s.id = strconv.AppendInt(s.id[:0], int64(s.n), 10)
		// Fixed width, so that ids compare in arrival order as bytes.
		for len(s.id) < 19 {
			s.id = append([]byte{'0'}, s.id...)
		}
		return streamclient.Event{ID: s.id, Type: []byte(EventservChannel), Data: data}, nil
	}
}

// Read and Write give wsutil the buffered connection; pongs are flushed at
// once.
func (s *eventservStream) Read(p []byte) (int, error) { return s.rw.Read(p) }
func (s *eventservStream) Write(p []byte) (int, error) {
	n, err := s.rw.Write(p)
	if err == nil {
		err = s.rw.Flush()
	}
	return n, err
}

func (s *eventservStream) Close() error { return s.conn.Close() }
