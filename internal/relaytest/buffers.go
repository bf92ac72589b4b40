package relaytest

import (
	"context"
	"net"
	"testing"
)

// SmallSendBuffers listens on a free loopback port and gives every accepted
// connection a socket send buffer of size bytes (the kernel doubles it).
// Loopback buffers otherwise grow to megabytes, so that what a client reads
// may have been written seconds earlier; with small ones, what arrives is
// close to what the relay is writing now.
func SmallSendBuffers(t testing.TB, size int) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return smallSendBuffers{ln.(*net.TCPListener), size}
}

type smallSendBuffers struct {
	*net.TCPListener
	size int
}

// Accept returns the *net.TCPConn itself, not a wrapper, so the relay can
// still take the connection over and reach its descriptor.
func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	if err := c.SetWriteBuffer(l.size); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// SmallReceiveBuffers returns a dial function whose connections have a
// socket receive buffer of size bytes (the kernel doubles it), for clients
// that read at their own pace and should not have megabytes in flight.
func SmallReceiveBuffers(size int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			if err := tc.SetReadBuffer(size); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, nil
	}
}
