package netpump

import (
	"bytes"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// runState is the scheduler's word for what the goroutine in Poller.Run is
// doing, as a goroutine dump shows it ("IO wait", "syscall", ...).
func runState(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 2); err != nil {
		t.Fatal(err)
	}
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "netpump.(*Poller).Run(") {
			head := g[:strings.IndexByte(g, '\n')]
			state := head[strings.IndexByte(head, '[')+1 : strings.IndexByte(head, ']')]
			state, _, _ = strings.Cut(state, ",")
			return state
		}
	}
	t.Fatal("no goroutine runs Poller.Run")
	return ""
}

func TestPollerWaitsParkedInGosPollerNotInASystemCall(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	go p.Run()
	defer p.Close()

	client, server := pair(t)
	reported := make(chan struct{}, 16)
	unwatch, err := p.Watch(server, Readable, func() { reported <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer unwatch()

	// Idle, Run must be parked where the scheduler wakes it itself: a
	// goroutine in a blocking epoll_wait needs a free processor to go on.
	deadline := time.Now().Add(5 * time.Second)
	for state := runState(t); state != "IO wait"; state = runState(t) {
		if time.Now().After(deadline) {
			t.Fatalf("Poller.Run waits in state %q, want %q", state, "IO wait")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// And it still reports: each write of the client's is a report.
	for i := 0; i < 3; i++ {
		if _, err := client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reported:
		case <-time.After(5 * time.Second):
			t.Fatalf("write %d was not reported", i+1)
		}
		b := make([]byte, 16)
		if _, err := server.Read(b); err != nil {
			t.Fatal(err)
		}
	}
	client.Close()
	select {
	case <-reported:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's hang-up was not reported")
	}
}

func TestClosingAPollerStopsItsParkedRun(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { p.Run(); close(stopped) }()
	time.Sleep(20 * time.Millisecond) // let Run park
	go p.Close()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}
