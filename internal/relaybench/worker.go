package relaybench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// WorkerEnv is the environment variable that turns relaybench (or a test
// binary that calls RunWorker from TestMain) into a worker process: one
// that opens a slice of a run's streams for the parent process, which runs
// the producer. A process's open-file limit bounds the streams it holds.
const WorkerEnv = "RELAYBENCH_WORKER"

// workerSpec is what a worker is told on the first line of its stdin. The
// JWT secret travels here rather than in its arguments, which any local
// user can read.
type workerSpec struct {
	Transport          string        `json:"transport"`
	Relays             []string      `json:"relays"`
	JWTSecret          string        `json:"jwt_secret"`
	Prefix             string        `json:"prefix"`
	Subscribers        int           `json:"subscribers"`
	Audience           int           `json:"audience"`
	From               int           `json:"from"`
	To                 int           `json:"to"`
	Templates          int           `json:"templates"`
	MeasureFrom        int           `json:"measure_from"`
	ClockStart         int64         `json:"clock_start_unix_ns"`
	ConnectConcurrency int           `json:"connect_concurrency"`
	ConnectTimeout     time.Duration `json:"connect_timeout_ns"`
	PerSourceAddr      int           `json:"per_source_addr"`
	TokenTTL           time.Duration `json:"token_ttl_ns"`
	Reconnect          bool          `json:"reconnect"`
	ReconnectWindow    time.Duration `json:"reconnect_window_ns"`
	// Select, if set, narrows [From, To) to the streams of one relay or to
	// those of all others.
	Select *relaySelect `json:"select,omitempty"`
}

// relaySelect picks, among subscribers, those whose streams go to relay
// Relay (Only) or those whose streams go to any other.
type relaySelect struct {
	Relay int  `json:"relay"`
	Only  bool `json:"only"`
}

// keeps reports whether subscriber i, whose stream goes to relay i mod
// relays, is selected (a nil selection keeps everyone).
func (s *relaySelect) keeps(i, relays int) bool {
	return s == nil || (i%relays == s.Relay) == s.Only
}

// count returns how many of [from, to) s keeps.
func (s *relaySelect) count(from, to, relays int) int {
	n := 0
	for i := from; i < to; i++ {
		if s.keeps(i, relays) {
			n++
		}
	}
	return n
}

// workerMsg is one line of a worker's stdout.
type workerMsg struct {
	Opened *workerOpened `json:"opened,omitempty"`
	Status *workerStatus `json:"status,omitempty"`
	Result *ClientResult `json:"result,omitempty"`
	Error  string        `json:"error,omitempty"`
}

type workerOpened struct {
	Opened int      `json:"opened"`
	Errors []string `json:"errors,omitempty"`
}

type workerStatus struct {
	Delivered int64 `json:"delivered"`
	Open      int   `json:"open"`
}

// statusInterval is how often a worker tells the parent its deliveries,
// which the parent's drain and deliveries/s read.
const statusInterval = 100 * time.Millisecond

// RunWorker is a worker process: it reads its spec from stdin, opens its
// streams, then takes commit acknowledgements from stdin ("a SEQ SENT
// ACKED", run-clock ns) until "x" or the end of stdin, and writes its
// counts as JSON lines to stdout.
func RunWorker(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewScanner(stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	if !in.Scan() {
		return fmt.Errorf("worker: no spec on stdin: %v", in.Err())
	}
	var spec workerSpec
	if err := json.Unmarshal(in.Bytes(), &spec); err != nil {
		return fmt.Errorf("worker: decode spec: %w", err)
	}
	out := &msgWriter{enc: json.NewEncoder(stdout)}
	if _, err := RaiseFileLimit(uint64(spec.Select.count(spec.From, spec.To, len(spec.Relays))) + 512); err != nil {
		_ = out.write(workerMsg{Error: err.Error()})
		return err
	}
	tr, ok := Transports()[spec.Transport]
	if !ok {
		return fmt.Errorf("worker: unknown transport %q", spec.Transport)
	}
	sent := NewSentAt(spec.Templates, spec.ClockStart)
	clients := NewClients(tr, sent, spec.Templates)
	clients.MeasureFrom, clients.MeasureTo, clients.DeferUnacked = spec.MeasureFrom, spec.Templates, true
	clients.SetLocations(spec.Subscribers / spec.Audience)
	relays := make([]Relay, len(spec.Relays))
	for i, u := range spec.Relays {
		relays[i].URL = u
	}
	cfg := Config{Subscribers: spec.Subscribers, JWTSecret: spec.JWTSecret, PerSourceAddr: spec.PerSourceAddr,
		ConnectTimeout: spec.ConnectTimeout, Reconnect: spec.Reconnect, ReconnectWindow: spec.ReconnectWindow}
	if err := setReconnect(clients, cfg, relays); err != nil {
		return err
	}
	pop := Population{Prefix: spec.Prefix, Subscribers: spec.Subscribers, Audience: spec.Audience}
	targets, err := targetsFor(cfg, relays, pop, spec.From, spec.To, spec.TokenTTL, spec.Select)
	if err != nil {
		return err
	}

	stop := make(chan struct{})
	go func() {
		defer close(stop)
		for in.Scan() {
			line := in.Text()
			if line == "x" {
				return
			}
			if f := strings.Fields(line); len(f) == 4 && f[0] == "a" {
				seq, e1 := strconv.Atoi(f[1])
				s, e2 := strconv.ParseInt(f[2], 10, 64)
				a, e3 := strconv.ParseInt(f[3], 10, 64)
				if e1 == nil && e2 == nil && e3 == nil {
					clients.Ack(seq, s, a)
				}
			}
		}
	}()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-cctx.Done():
		}
	}()
	opened, errs := clients.Connect(cctx, targets, spec.ConnectConcurrency, spec.ConnectTimeout)
	op := &workerOpened{Opened: opened}
	for _, e := range errs {
		op.Errors = append(op.Errors, e.Error())
	}
	if err := out.write(workerMsg{Opened: op}); err != nil {
		return err
	}
	tick := time.NewTicker(statusInterval)
	defer tick.Stop()
status:
	for {
		select {
		case <-stop:
			break status
		case <-ctx.Done():
			break status
		case <-tick.C:
			if err := out.write(workerMsg{Status: &workerStatus{Delivered: clients.Delivered(), Open: clients.Open()}}); err != nil {
				return err
			}
		}
	}
	clients.Close()
	res := clients.Result()
	res.Opened = opened
	res.OpenErrors = op.Errors
	res.Process = selfInfo(opened)
	return out.write(workerMsg{Result: &res})
}

type msgWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *msgWriter) write(m workerMsg) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(m); err != nil {
		return fmt.Errorf("worker: write to parent: %w", err)
	}
	return nil
}

// selfInfo reads this process's resident memory and CPU time.
func selfInfo(streams int) *ProcessInfo {
	info := &ProcessInfo{PID: os.Getpid(), Streams: streams}
	if st, err := ReadProcStatus(info.PID); err == nil {
		info.RSS = st.RSS
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		info.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	return info
}

// workers are the worker processes of a run, seen from the parent.
type workers struct {
	procs []*workerProc
}

type workerProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	streams int

	ackMu  sync.RWMutex
	acks   chan [3]int64
	closed bool
	wrote  chan error // the ack writer's end

	opened    chan workerOpened
	result    chan ClientResult
	failed    chan error
	delivered atomic.Int64
	open      atomic.Int64
	exited    chan error
}

// startWorkers starts one worker process per slice [from, to) of the
// subscribers, running command (relaybench itself) with WorkerEnv set.
func startWorkers(ctx context.Context, command []string, base workerSpec, slices [][2]int, stderr io.Writer) (*workers, error) {
	ws := &workers{}
	for _, sl := range slices {
		spec := base
		spec.From, spec.To = sl[0], sl[1]
		line, err := json.Marshal(spec)
		if err != nil {
			return ws, fmt.Errorf("encode worker spec: %w", err)
		}
		cmd := exec.Command(command[0], command[1:]...)
		cmd.Env = append(os.Environ(), WorkerEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return ws, fmt.Errorf("start worker: %w", err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return ws, fmt.Errorf("start worker: %w", err)
		}
		if err := cmd.Start(); err != nil {
			return ws, fmt.Errorf("start worker %s: %w", command[0], err)
		}
		p := &workerProc{cmd: cmd, stdin: stdin, streams: sl[1] - sl[0], acks: make(chan [3]int64, 1<<16), wrote: make(chan error, 1),
			opened: make(chan workerOpened, 1), result: make(chan ClientResult, 1), failed: make(chan error, 1), exited: make(chan error, 1)}
		ws.procs = append(ws.procs, p)
		go p.readMessages(stdout)
		if _, err := stdin.Write(append(line, '\n')); err != nil {
			return ws, fmt.Errorf("send spec to worker %d: %w", cmd.Process.Pid, err)
		}
		go p.writeAcks()
	}
	return ws, nil
}

func (p *workerProc) readMessages(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var m workerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			p.fail(fmt.Errorf("worker %d: bad message: %w", p.cmd.Process.Pid, err))
			_, _ = io.Copy(io.Discard, stdout)
			break
		}
		switch {
		case m.Error != "":
			p.fail(fmt.Errorf("worker %d: %s", p.cmd.Process.Pid, m.Error))
		case m.Opened != nil:
			p.opened <- *m.Opened
		case m.Status != nil:
			p.delivered.Store(m.Status.Delivered)
			p.open.Store(int64(m.Status.Open))
		case m.Result != nil:
			p.result <- *m.Result
		}
	}
	p.exited <- p.cmd.Wait()
}

// fail keeps the first error of the worker.
func (p *workerProc) fail(err error) {
	select {
	case p.failed <- err:
	default:
	}
}

// writeAcks forwards acknowledgements to the worker, flushing whenever it
// has no more waiting, then tells it to stop.
func (p *workerProc) writeAcks() {
	w := bufio.NewWriterSize(p.stdin, 32<<10)
	var err error
	buf := make([]byte, 0, 64)
	for a := range p.acks {
		buf = append(buf[:0], "a "...)
		buf = strconv.AppendInt(buf, a[0], 10)
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, a[1], 10)
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, a[2], 10)
		buf = append(buf, '\n')
		if err == nil {
			_, err = w.Write(buf)
		}
		if len(p.acks) == 0 && err == nil {
			err = w.Flush()
		}
	}
	if err == nil {
		_, err = w.WriteString("x\n")
	}
	if err == nil {
		err = w.Flush()
	}
	p.wrote <- err
}

// Ack tells every worker of a commit acknowledgement.
func (ws *workers) Ack(seq int, sent, acked int64) {
	for _, p := range ws.procs {
		p.ackMu.RLock()
		if !p.closed {
			p.acks <- [3]int64{int64(seq), sent, acked}
		}
		p.ackMu.RUnlock()
	}
}

// WaitOpened waits until every worker has opened its streams.
func (ws *workers) WaitOpened(ctx context.Context) (int, []string, error) {
	total := 0
	var errs []string
	for _, p := range ws.procs {
		select {
		case op := <-p.opened:
			total += op.Opened
			errs = append(errs, op.Errors...)
		case err := <-p.failed:
			return total, errs, err
		case err := <-p.exited:
			p.exited <- err
			return total, errs, fmt.Errorf("worker %d exited before opening its streams: %v", p.cmd.Process.Pid, err)
		case <-ctx.Done():
			return total, errs, ctx.Err()
		}
	}
	return total, errs, nil
}

// Delivered returns the workers' deliveries as last reported.
func (ws *workers) Delivered() int64 {
	var n int64
	for _, p := range ws.procs {
		n += p.delivered.Load()
	}
	return n
}

// Open returns the workers' open streams as last reported.
func (ws *workers) Open() int {
	n := 0
	for _, p := range ws.procs {
		n += int(p.open.Load())
	}
	return n
}

// PIDs returns the workers' process ids.
func (ws *workers) PIDs() []int {
	var out []int
	for _, p := range ws.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}

// Finish tells every worker to stop, and returns their results.
func (ws *workers) Finish(ctx context.Context) ([]ClientResult, error) {
	for _, p := range ws.procs {
		p.closeAcks()
	}
	var out []ClientResult
	var errs []error
	for _, p := range ws.procs {
		if err := <-p.wrote; err != nil {
			errs = append(errs, fmt.Errorf("worker %d: send acknowledgements: %w", p.cmd.Process.Pid, err))
		}
		if r, err := p.awaitResult(ctx); err != nil {
			errs = append(errs, err)
		} else {
			out = append(out, r)
		}
		_ = p.stdin.Close()
	}
	return out, errors.Join(errs...)
}

// awaitResult waits for the worker's result. The message reader hands over
// the result before it reports the exit, so once the exit is in, a result
// not yet taken is already waiting: both are ready then, and select would
// pick either.
func (p *workerProc) awaitResult(ctx context.Context) (ClientResult, error) {
	select {
	case r := <-p.result:
		return r, nil
	case err := <-p.failed:
		return ClientResult{}, err
	case err := <-p.exited:
		p.exited <- err
		select {
		case r := <-p.result:
			return r, nil
		default:
			return ClientResult{}, fmt.Errorf("worker %d exited without a result: %v", p.cmd.Process.Pid, err)
		}
	case <-ctx.Done():
		return ClientResult{}, ctx.Err()
	}
}

func (p *workerProc) closeAcks() {
	p.ackMu.Lock()
	defer p.ackMu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.acks)
	}
}

// Stop ends every worker (after Finish, they have ended already) and waits
// for them.
func (ws *workers) Stop() {
	for _, p := range ws.procs {
		p.closeAcks()
		_ = p.stdin.Close()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}
