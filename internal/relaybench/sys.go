package relaybench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgrelay/pgrelay/internal/streamclient"
)

// RaiseFileLimit lets this process (and relays it spawns, which inherit the
// limit) hold at least need descriptors: the soft limit goes up to the hard
// one, and the hard one too when the process may raise it (root). It returns
// the soft limit in force afterwards, and an error if that is below need.
func RaiseFileLimit(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read open-file limit: %w", err)
	}
	want := lim
	want.Cur = max(lim.Cur, min(need, lim.Max))
	if need > lim.Max {
		want.Max, want.Cur = need, need
	}
	if want != lim {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			// Without privilege the hard limit stays: take what it allows.
			want = lim
			want.Cur = lim.Max
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
				return lim.Cur, fmt.Errorf("raise open-file limit to %d: %w", want.Cur, err)
			}
		}
	}
	if want.Cur < need {
		return want.Cur, fmt.Errorf("open-file limit is %d, a run of this size needs %d: raise the hard limit (ulimit -Hn, limits.conf, or the container's nofile) or use fewer subscribers", want.Cur, need)
	}
	return want.Cur, nil
}

// CheckLoopback refuses targets that are not on this machine: relaybench
// opens thousands of connections and must not be pointed at someone else.
func CheckLoopback(u *url.URL) error {
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !addr.IsLoopback() {
		return fmt.Errorf("target %s: only loopback addresses (127.0.0.0/8, ::1, localhost) are allowed", u.Redacted())
	}
	return nil
}

// SourceAddrs returns n loopback source addresses 127.0.0.1, 127.0.0.2, …:
// each has its own range of ephemeral ports, so n×~28,000 connections fit.
func SourceAddrs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{127, 0, byte((i + 1) >> 8), byte(i + 1)})
	}
	return out
}

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT socket option.
const ipBindAddressNoPort = 24

// Dialer returns a streamclient.Dialer whose connections leave from src.
// The port is chosen at connect time, not when the socket is bound to src
// (IP_BIND_ADDRESS_NO_PORT): a port bound beforehand is reserved for every
// destination, so tens of thousands of streams would use up the machine's
// ephemeral ports for every other program's connections (other tests on the
// same machine then fail with "cannot assign requested address"); chosen at
// connect, a port is only taken for connections to the same relay.
func Dialer(src netip.Addr, timeout time.Duration) streamclient.Dialer {
	d := &net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Control: bindNoPort}
	return d.DialContext
}

func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_BIND_ADDRESS_NO_PORT: %w", serr)
	}
	return nil
}

// ProcStatus is the memory of one process, from /proc/<pid>/status.
type ProcStatus struct {
	RSS     int64 `json:"rss_bytes"`
	HWM     int64 `json:"rss_peak_bytes"`
	Threads int   `json:"threads"`
}

// ReadProcStatus reads the resident memory of process pid.
func ReadProcStatus(pid int) (ProcStatus, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ProcStatus{}, fmt.Errorf("read memory of relay process %d: %w", pid, err)
	}
	return parseProcStatus(b)
}

func parseProcStatus(b []byte) (ProcStatus, error) {
	var st ProcStatus
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			st.RSS, found = n<<10, found+1
		case "VmHWM":
			st.HWM = n << 10
		case "Threads":
			st.Threads = int(n)
		}
	}
	if found == 0 {
		return st, fmt.Errorf("no VmRSS in /proc status")
	}
	return st, nil
}

// Machine describes where a run happened.
type Machine struct {
	CPUs        int      `json:"nproc"`
	CPUModel    string   `json:"cpu_model"`
	MemoryBytes int64    `json:"memory_bytes"`
	GoVersion   string   `json:"go_version"`
	PostgreSQL  string   `json:"postgresql"`
	Kernel      string   `json:"kernel"`
	LoadBefore  string   `json:"loadavg_before"`
	LoadAfter   string   `json:"loadavg_after"`
	Started     string   `json:"started"`
	Notes       []string `json:"notes,omitempty"`
}

// LoadAvg returns the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// DescribeMachine reads CPU, memory and kernel from /proc.
func DescribeMachine(ctx context.Context, goVersion string) Machine {
	m := Machine{GoVersion: goVersion, LoadBefore: LoadAvg(), Started: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			name, value, _ := strings.Cut(line, ":")
			switch strings.TrimSpace(name) {
			case "processor":
				m.CPUs++
			case "model name":
				m.CPUModel = strings.TrimSpace(value)
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemoryBytes = kb << 10
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}
