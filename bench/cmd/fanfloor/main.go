// Command fanfloor measures how fast this machine can fan one small frame
// out to many loopback TCP connections and read it back, with nothing else
// in the way: no database, no HTTP, no framing but a fixed-size frame that
// carries its send time. It is the floor under any relay's fan-out latency
// here (pgrelay's, pg_eventserv's): a server that writes every frame to
// every subscriber's socket, read by clients on the same cores, cannot beat
// it. bench/eventserv-compare.sh's scenario is its default shape.
//
//	fanfloor [--subscribers 1000] [--rate 44] [--size 300] [--writers 2]
//	         [--warmup 3s] [--duration 20s]
//
// It prints one line: deliveries, latency percentiles from the start of a
// frame's fan-out to each client's read, and the process's CPU per delivery.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanfloor:", err)
		os.Exit(1)
	}
}

type config struct {
	subscribers, size, writers int
	rate                       float64
	warmup, duration           time.Duration
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	var c config
	fs := flag.NewFlagSet("fanfloor", flag.ContinueOnError)
	fs.IntVar(&c.subscribers, "subscribers", 1000, "connections every frame is written to")
	fs.Float64Var(&c.rate, "rate", 44, "frames per second")
	fs.IntVar(&c.size, "size", 300, "bytes per frame (at least 16)")
	fs.IntVar(&c.writers, "writers", 2, "goroutines writing each frame, each to its share of the connections")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "frames sent before measuring")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measured time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case c.subscribers < 1:
		return fmt.Errorf("--subscribers must be at least 1, got %d", c.subscribers)
	case c.size < 16:
		return fmt.Errorf("--size must be at least 16 bytes, got %d", c.size)
	case c.writers < 1:
		return fmt.Errorf("--writers must be at least 1, got %d", c.writers)
	case c.rate <= 0:
		return fmt.Errorf("--rate must be positive, got %g", c.rate)
	}
	servers, clients, err := connect(ctx, c.subscribers)
	if err != nil {
		return err
	}
	defer closeAll(servers)
	defer closeAll(clients)

	// A frame's first 8 bytes are its send time, the next 8 whether it is
	// measured; readers keep one latency per measured frame.
	var wg sync.WaitGroup
	lat := make([][]time.Duration, len(clients))
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[i] = read(cl, c.size)
		}()
	}

	before := cpuTime()
	sent, err := send(ctx, c, servers)
	cpu := cpuTime() - before
	// Closing the servers' side ends every reader once it has read all.
	closeAll(servers)
	wg.Wait()
	if err != nil {
		return err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	want := sent * c.subscribers
	if len(all) != want {
		return fmt.Errorf("%d of %d measured deliveries arrived", len(all), want)
	}
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	_, err = fmt.Fprintf(stdout,
		"subscribers=%d rate=%g size=%d writers=%d frames=%d deliveries=%d p50=%.2fms p90=%.2fms p99=%.2fms p99.9=%.2fms max=%.2fms cpu_per_delivery=%.2fus\n",
		c.subscribers, c.rate, c.size, c.writers, sent, len(all),
		pct(0.50), pct(0.90), pct(0.99), pct(0.999), float64(all[len(all)-1].Microseconds())/1000,
		float64(cpu.Microseconds())/float64(max(1, (sent+warmupFrames(c))*c.subscribers)))
	return err
}

// connect opens n loopback connections and returns both ends of each.
func connect(ctx context.Context, n int) (servers, clients []net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	var d net.Dialer
	for range n {
		cl, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			closeAll(clients)
			closeAll(servers)
			return nil, nil, fmt.Errorf("dial connection %d of %d: %w", len(clients)+1, n, err)
		}
		sv, err := ln.Accept()
		if err != nil {
			cl.Close()
			closeAll(clients)
			closeAll(servers)
			return nil, nil, fmt.Errorf("accept connection %d of %d: %w", len(clients)+1, n, err)
		}
		clients, servers = append(clients, cl), append(servers, sv)
	}
	return servers, clients, nil
}

func warmupFrames(c config) int { return int(c.warmup.Seconds() * c.rate) }

// send writes a frame to every server connection at the configured rate:
// the warmup's frames first, then the measured ones, whose count it returns.
func send(ctx context.Context, c config, servers []net.Conn) (int, error) {
	warm, measured := warmupFrames(c), int(c.duration.Seconds()*c.rate)
	share := (len(servers) + c.writers - 1) / c.writers
	frame := make([]byte, c.size)
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.rate))
	defer tick.Stop()
	for i := range warm + measured {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
		// One buffer for every connection, as a relay shares an encoded
		// event: it changes only once the last write of the frame before
		// has returned.
		binary.LittleEndian.PutUint64(frame, uint64(time.Now().UnixNano()))
		binary.LittleEndian.PutUint64(frame[8:], boolWord(i >= warm))
		var wg sync.WaitGroup
		errs := make([]error, c.writers)
		for w := range c.writers {
			part := servers[min(len(servers), w*share):min(len(servers), (w+1)*share)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, sv := range part {
					if _, err := sv.Write(frame); err != nil {
						errs[w] = fmt.Errorf("write frame %d: %w", i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return 0, err
		}
	}
	return measured, nil
}

func boolWord(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// read reads frames from cl until the other side closes, returning the
// latency of every measured one.
func read(cl net.Conn, size int) []time.Duration {
	var lat []time.Duration
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(cl, buf); err != nil {
			return lat
		}
		if binary.LittleEndian.Uint64(buf[8:]) == 1 {
			sent := int64(binary.LittleEndian.Uint64(buf))
			lat = append(lat, time.Duration(time.Now().UnixNano()-sent))
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}
