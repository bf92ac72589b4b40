package relaybench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/ctxtime"
)

// Spawned are relays relaybench started on a database it created.
type Spawned struct {
	Relays      []Relay
	DatabaseURL string
	DBName      string

	adminURL string
	dir      string
	procs    []*exec.Cmd
	waits    []chan error
	keep     bool
}

// StartSpawned builds the relay and migrate commands (unless given), creates
// and migrates a fresh database on cfg.DatabaseURL's server, and starts
// cfg.Spawn relays on free loopback ports. Stop undoes all of it.
func StartSpawned(ctx context.Context, cfg Config, logf func(string, ...any)) (sp *Spawned, err error) {
	dir, err := os.MkdirTemp("", "relaybench-")
	if err != nil {
		return nil, fmt.Errorf("spawn: temporary directory: %w", err)
	}
	sp = &Spawned{dir: dir, keep: cfg.Keep, adminURL: cfg.DatabaseURL}
	if sp.adminURL == "" {
		sp.adminURL = "host=127.0.0.1 dbname=postgres"
	}
	defer func() {
		if err != nil {
			sp.Stop(logf)
		}
	}()
	relayBin, migrateBin := cfg.RelayBin, cfg.MigrateBin
	if relayBin == "" || migrateBin == "" {
		logf("building cmd/relay and cmd/migrate")
		build := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/relay", "./cmd/migrate")
		build.Dir, err = moduleRoot(ctx)
		if err != nil {
			return sp, err
		}
		if out, err := build.CombinedOutput(); err != nil {
			return sp, fmt.Errorf("spawn: go build: %w: %s", err, out)
		}
		relayBin, migrateBin = orDefault(relayBin, filepath.Join(dir, "relay")), orDefault(migrateBin, filepath.Join(dir, "migrate"))
	}
	if err := sp.createDatabase(ctx); err != nil {
		return sp, err
	}
	logf("created database %s; migrating", sp.DBName)
	if out, err := exec.CommandContext(ctx, migrateBin, "--database-url", sp.DatabaseURL, "up").CombinedOutput(); err != nil {
		return sp, fmt.Errorf("spawn: migrate up: %w: %s", err, out)
	}
	for i := range cfg.Spawn {
		if err := sp.startRelay(ctx, cfg, relayBin, i); err != nil {
			return sp, err
		}
	}
	for _, r := range sp.Relays {
		if err := waitReady(ctx, r.URL, 30*time.Second); err != nil {
			return sp, fmt.Errorf("spawn: relay %s (log: %s): %w", r.URL, sp.dir, err)
		}
	}
	logf("%d relay(s) ready: %v", len(sp.Relays), sp.Relays)
	return sp, nil
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("spawn: run relaybench inside the pgrelay module (or give --relay-bin and --migrate-bin)")
	}
	return filepath.Dir(gomod), nil
}

func (sp *Spawned) createDatabase(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(sp.adminURL)
	if err != nil {
		return fmt.Errorf("spawn: bad --database-url: %w", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sp.DBName = "relaybench_" + hex.EncodeToString(b)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("spawn: connect to %s: %w", cfg.Host, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{sp.DBName}.Sanitize()); err != nil {
		sp.DBName = ""
		return fmt.Errorf("spawn: create database: %w", err)
	}
	sp.DatabaseURL = fmt.Sprintf("host=%s port=%d user=%s dbname=%s", quoteDSN(cfg.Host), cfg.Port, quoteDSN(cfg.User), sp.DBName)
	if cfg.Password != "" {
		sp.DatabaseURL += " password=" + quoteDSN(cfg.Password)
	}
	return nil
}

func quoteDSN(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func (sp *Spawned) startRelay(ctx context.Context, cfg Config, bin string, i int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("spawn: find a free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logPath := filepath.Join(sp.dir, "relay-"+strconv.Itoa(i)+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("spawn: relay log: %w", err)
	}
	// A benchmark opens more streams per relay than the default caps allow;
	// --relay-flag, coming later, still sets them.
	args := append([]string{"--database-url", sp.DatabaseURL, "--addr", addr, "--jwt-secret", cfg.JWTSecret, "--log-level", "warn",
		"--max-connections=0", "--max-connections-per-user=0"}, cfg.RelayFlags...)
	// Not CommandContext: the relay must get SIGTERM and drain, not SIGKILL.
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A relay outlives no crashed relaybench.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("spawn: start relay: %w", err)
	}
	wait := make(chan error, 1)
	go func() { wait <- cmd.Wait(); logFile.Close() }()
	sp.procs = append(sp.procs, cmd)
	sp.waits = append(sp.waits, wait)
	sp.Relays = append(sp.Relays, Relay{URL: "http://" + addr, PID: cmd.Process.Pid})
	return nil
}

func waitReady(ctx context.Context, base string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %s (last: %v)", timeout, err)
		}
		if err := ctxtime.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// Stop terminates the relays (SIGTERM, then SIGKILL after 20 s) and drops
// the database unless the run keeps it.
func (sp *Spawned) Stop(logf func(string, ...any)) {
	for _, p := range sp.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for i, w := range sp.waits {
		select {
		case <-w:
		case <-time.After(20 * time.Second):
			logf("relay %d did not stop within 20s; killing it", sp.procs[i].Process.Pid)
			_ = sp.procs[i].Process.Kill()
			<-w
		}
	}
	sp.reportErrors(logf)
	if sp.keep {
		logf("kept database %s and relay logs in %s", sp.DBName, sp.dir)
		return
	}
	if sp.DBName != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, sp.adminURL); err == nil {
			if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{sp.DBName}.Sanitize()+" WITH (FORCE)"); err != nil {
				logf("drop database %s: %v", sp.DBName, err)
			}
			conn.Close(ctx)
		} else {
			logf("drop database %s: %v", sp.DBName, err)
		}
	}
	_ = os.RemoveAll(sp.dir)
}

func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("relay URL %q: %w", s, err)
	}
	return u, nil
}

// reportErrors repeats the first error lines of the relays' logs, which are
// removed with the run: an HTTP 500 is only explained there.
func (sp *Spawned) reportErrors(logf func(string, ...any)) {
	shown := 0
	for i := range sp.procs {
		b, err := os.ReadFile(filepath.Join(sp.dir, "relay-"+strconv.Itoa(i)+".log"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "level=ERROR") && shown < 5 {
				logf("relay %d log: %s", i, line)
				shown++
			}
		}
	}
}
