package relaytest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BuildRelay compiles cmd/relay into a temporary directory and returns the
// binary's path: fault tests run relays as processes they can SIGKILL.
func BuildRelay(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "relay")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/pgrelay/pgrelay/cmd/relay").CombinedOutput()
	if err != nil {
		t.Fatalf("build cmd/relay: %v\n%s", err, out)
	}
	return bin
}

// Process is a relay running as a child process.
type Process struct {
	URL string

	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	log  strings.Builder
}

// StartProcess runs the relay binary on the database at dbURL, on a port the
// kernel picks, with test settings (fast polls, small pool); env adds or
// overrides variables (KEY=value). It waits until the relay is ready and
// stops it when the test ends.
func StartProcess(t testing.TB, bin, dbURL string, env ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, "--addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"RELAY_JWT_SECRET="+Secret,
		"RELAY_POOL_SIZE=4",
		"RELAY_SAFETY_POLL=500ms",
		"RELAY_SHUTDOWN_WAIT=5s",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("relay process stderr: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start relay process: %v", err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	// The relay logs the address the kernel gave it.
	servingLine := regexp.MustCompile(`msg="relay serving".* addr=(\S+)`)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := servingLine.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	select {
	case a := <-addr:
		p.URL = "http://" + a
	case <-p.done:
		t.Fatalf("relay process exited before serving:\n%s", p.Log())
	case <-time.After(30 * time.Second):
		t.Fatalf("relay process did not start serving within 30s:\n%s", p.Log())
	}
	Eventually(t, 30*time.Second, "relay process ready", func() bool {
		resp, err := http.Get(p.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// Log returns what the process has logged so far.
func (p *Process) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Kill sends SIGKILL: no shutdown, no goodbye to clients or the database.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill relay process: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("relay process did not die within 15s of SIGKILL")
	}
}

// Shutdown sends SIGTERM, as an orchestrator stopping the relay does, and
// waits for the process to exit: it tells its clients to reconnect and
// gives up the sequencer's role on its way out.
func (p *Process) Shutdown(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stop relay process: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("relay process did not exit within 30s of SIGTERM")
	}
}

// stop ends the process gracefully if it still runs.
func (p *Process) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("relay process ignored SIGTERM for 15s; killed it")
	}
}

// String names the process for test logs.
func (p *Process) String() string { return fmt.Sprintf("relay pid %d at %s", p.cmd.Process.Pid, p.URL) }
