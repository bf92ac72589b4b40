package ws_test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/ws"
)

// These tests speak to the relay through Node's "ws" package, a WebSocket
// implementation written by others, driven by testdata/wsclient.js.

const npmInstall = `npm install --prefix "$HOME/.cache/pgrelay-npm" ws@8`

// nodeModules returns the node_modules directory that holds the ws
// package: $PGRELAY_NODE_MODULES, else where the install command of the
// README puts it.
func nodeModules(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PGRELAY_NODE_MODULES")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "pgrelay-npm", "node_modules")
	}
	if _, err := os.Stat(filepath.Join(dir, "ws", "package.json")); err != nil {
		t.Fatalf("the Node WebSocket tests need the npm package ws in %s (%v); install it with:\n  %s\n"+
			"and set PGRELAY_NODE_MODULES to its node_modules directory if you put it elsewhere", dir, err, npmInstall)
	}
	return dir
}

// nodeClient is a running testdata/wsclient.js.
type nodeClient struct {
	reports chan map[string]any
}

// startNode runs the Node client against url as token's subscriber,
// performing scenario. It ends with the test.
func startNode(t *testing.T, url, token, scenario string) *nodeClient {
	t.Helper()
	modules := nodeModules(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the Node WebSocket tests need node (Node.js 18 or later) on PATH: %v", err)
	}
	cmd := exec.Command(node, filepath.Join("testdata", "wsclient.js"), url, scenario)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "PGRELAY_TOKEN="+token)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	c := &nodeClient{reports: make(chan map[string]any, 1000)}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(c.reports)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r map[string]any
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Errorf("node client wrote %q: %v", sc.Text(), err)
				continue
			}
			c.reports <- r
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close() // the client exits when its stdin ends
		<-readDone
		_ = cmd.Wait()
	})
	return c
}

// await returns the first report that has key, failing the test after
// wait. Reports before it are dropped, save errors, which fail the test.
func (c *nodeClient) await(t *testing.T, key string) map[string]any {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case r, ok := <-c.reports:
			if !ok {
				t.Fatalf("node client exited before reporting %q", key)
			}
			if e, ok := r["error"]; ok && key != "error" {
				t.Fatalf("node client: %v", e)
			}
			if _, ok := r[key]; ok {
				return r
			}
		case <-timeout:
			t.Fatalf("node client did not report %q within %v", key, wait)
		}
	}
}

func TestNodeClientFragmentedTextAndBinaryMessagesAreDiscardedAndTheStreamGoesOn(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), relaytest.Token(t, "zowi-1"), "fragments")
	c.await(t, "sent") // reported as the frames are sent, before any answer
	// The ping between two fragments of a message is answered at once.
	if got := c.await(t, "pong")["pong"]; got != "between fragments" {
		t.Errorf("pong %q, want the ping's payload %q", got, "between fragments")
	}
	relaytest.InsertTemplate(t, db, "after fragments", "zolo-1", "loc-1")
	var msg struct {
		Topic string
		Data  relaytest.TemplateRow
	}
	raw := c.await(t, "message")["message"].(string)
	if err := json.Unmarshal([]byte(raw), &msg); err != nil || msg.Topic != "templates" || msg.Data.Name != "after fragments" {
		t.Fatalf("message %s (%v), want the template inserted after the fragments", raw, err)
	}
}

func TestNodeClientPingIsAnsweredWithTheSamePayload(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), relaytest.Token(t, "zowi-1"), "ping")
	if got := c.await(t, "pong")["pong"]; got != "pgrelay-ping-42" {
		t.Errorf("pong %q, want %q", got, "pgrelay-ping-42")
	}
}

func TestNodeClientClosingIsAnsweredWithItsCodeAndEndsTheStream(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), relaytest.Token(t, "zowi-1"), "close")
	// Node reports the code of the relay's answering close frame; a relay
	// that dropped the connection instead would show 1006.
	if got := c.await(t, "close")["close"]; got != float64(4321) {
		t.Errorf("close code %v, want the client's own 4321 echoed", got)
	}
	relaytest.Eventually(t, wait, "the stream to end", func() bool { return r.Server.Hub().Stats().Subscriptions == 0 })
}

func TestNodeClientMessagesOver4KiBAreClosedWith1009(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	for _, scenario := range []string{"oversized", "oversized-binary-fragments"} {
		t.Run(scenario, func(t *testing.T) {
			c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), relaytest.Token(t, "zowi-1"), scenario)
			if got := c.await(t, "close")["close"]; got != float64(ws.CloseMessageTooBig) {
				t.Errorf("close code %v, want %d", got, ws.CloseMessageTooBig)
			}
		})
	}
}

func TestNodeClientIsClosedWith1012OnShutdownAfterAFullCloseHandshake(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), relaytest.Token(t, "zowi-1"), "listen")
	c.await(t, "open")
	relaytest.Eventually(t, wait, "the stream to open", func() bool { return r.Server.Hub().Stats().Subscriptions == 1 })
	start := time.Now()
	r.Stop(t)
	got := c.await(t, "close")
	if got["close"] != float64(ws.CloseShutdown) || got["reason"] != ws.ReasonShutdown {
		t.Errorf("closed with %v %q, want %d %q", got["close"], got["reason"], ws.CloseShutdown, ws.ReasonShutdown)
	}
	// Node's client answers the close frame and waits for the relay to end
	// the connection; a relay that waited out its close timeout instead
	// would take seconds.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown with one WebSocket client took %v", d)
	}
}

func TestNodeClientThatStopsAnsweringPingsIsDroppedAndItsPlaceFreed(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.Heartbeat = 50 * time.Millisecond
		c.WriteTimeout = 300 * time.Millisecond
		c.MaxConnectionsPerUser = 1
	})
	token := relaytest.Token(t, "zowi-1")
	c := startNode(t, relaytest.WSURL(r.URL, relaytest.SSEOptions{}), token, "silent")
	c.await(t, "ping")
	got := c.await(t, "close")
	if got["close"] != float64(1006) {
		t.Errorf("silent client closed with %v, want 1006 (dropped without a close frame)", got["close"])
	}
	relaytest.Eventually(t, wait, "the stream to end", func() bool { return r.Server.Hub().Stats().Subscriptions == 0 })
	// With one stream allowed per subscriber, the next one is admitted only
	// if the dropped one gave its place back.
	next := relaytest.SubscribeWS(t, r.URL, token, relaytest.SSEOptions{})
	relaytest.InsertTemplate(t, db, "after the drop", "zolo-1", "loc-1")
	if names := relaytest.TemplateNames(t, next.Collect(t, 1, wait)); names[0] != "after the drop" {
		t.Errorf("next stream got %q", names)
	}
}
