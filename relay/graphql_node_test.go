package relay_test

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The GraphQL tests speak to the relay through the npm libraries GraphQL
// users run (graphql-ws, @apollo/client, subscriptions-transport-ws), driven
// by graphql/testdata/client.js, and through Node's ws package for what
// those libraries never send (graphql/testdata/raw.js).

const graphqlNPMInstall = `npm install --prefix "$HOME/.cache/pgrelay-npm" ws@8 graphql@16 graphql-ws@6 subscriptions-transport-ws@0.11 @apollo/client@4`

// graphqlNodeModules returns the node_modules directory holding the GraphQL
// client libraries: $PGRELAY_NODE_MODULES, else where README's install
// command puts them.
func graphqlNodeModules(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PGRELAY_NODE_MODULES")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "pgrelay-npm", "node_modules")
	}
	for _, pkg := range []string{"ws", "graphql", "graphql-ws", "subscriptions-transport-ws", "@apollo/client"} {
		if _, err := os.Stat(filepath.Join(dir, pkg, "package.json")); err != nil {
			t.Fatalf("the GraphQL tests need the npm package %s in %s (%v); install them with:\n  %s\n"+
				"and set PGRELAY_NODE_MODULES to its node_modules directory if you put it elsewhere", pkg, dir, err, graphqlNPMInstall)
		}
	}
	return dir
}

// report is one line a Node client wrote.
type report map[string]any

func (r report) has(key string) bool { _, ok := r[key]; return ok }

func (r report) str(key string) string { s, _ := r[key].(string); return s }

// nodeGraphQL is a running Node process holding clients of one library.
type nodeGraphQL struct {
	t     *testing.T
	mu    sync.Mutex
	stdin io.WriteCloser
	// reports of each client, by its name
	reports map[string]chan report
	exited  chan struct{}
}

// startGraphQLNode runs graphql/testdata/<script> with cfg as its argument.
// It ends with the test.
func startGraphQLNode(t *testing.T, script string, cfg any) *nodeGraphQL {
	t.Helper()
	modules := graphqlNodeModules(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the GraphQL tests need node (Node.js 18 or later) on PATH: %v", err)
	}
	arg, _ := json.Marshal(cfg)
	cmd := exec.Command(node, filepath.Join("graphql", "testdata", script), string(arg))
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
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
	n := &nodeGraphQL{t: t, stdin: stdin, reports: map[string]chan report{}, exited: make(chan struct{})}
	go func() {
		defer close(n.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var r report
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Errorf("node client wrote %q: %v", sc.Text(), err)
				continue
			}
			if r.has("fatal") {
				t.Errorf("node client: %v", r["fatal"])
			}
			n.channel(r.str("client")) <- r
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close() // the process exits when its stdin ends
		<-n.exited
		_ = cmd.Wait()
	})
	return n
}

func (n *nodeGraphQL) channel(client string) chan report {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.reports[client]
	if ch == nil {
		ch = make(chan report, 10000)
		n.reports[client] = ch
	}
	return ch
}

// send writes one command line to the process.
func (n *nodeGraphQL) send(cmd any) {
	n.t.Helper()
	b, _ := json.Marshal(cmd)
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.stdin.Write(append(b, '\n')); err != nil {
		n.t.Fatalf("write to node client: %v", err)
	}
}

// gqlClient is one client in a Node process.
type gqlClient struct {
	n    *nodeGraphQL
	name string
	t    *testing.T
}

// connect makes a client named name connect with opts (url, token,
// tokenIn, payload: see client.js).
func (n *nodeGraphQL) connect(name string, opts map[string]any) *gqlClient {
	n.send(map[string]any{"client": name, "connect": opts})
	return &gqlClient{n: n, name: name, t: n.t}
}

// graphqlClient starts a Node process of library with one client in it.
func graphqlClient(t *testing.T, library string, opts map[string]any) *gqlClient {
	return startGraphQLNode(t, "client.js", map[string]any{"library": library}).connect("c", opts)
}

func (c *gqlClient) send(cmd map[string]any) {
	cmd["client"] = c.name
	c.n.send(cmd)
}

// subscribe starts a subscription named name.
func (c *gqlClient) subscribe(name, query string, vars map[string]any) {
	c.send(map[string]any{"subscribe": map[string]any{"name": name, "query": query, "variables": vars}})
}

// graphqlWait bounds each wait for a client: generous, since a Node
// process starting up on a busy machine takes seconds.
const graphqlWait = 30 * time.Second

// await returns the first report pred accepts, failing the test after
// graphqlWait or if the client exits first. Reports before it are dropped.
func (c *gqlClient) await(what string, pred func(report) bool) report {
	c.t.Helper()
	timeout := time.After(graphqlWait)
	ch := c.n.channel(c.name)
	for {
		select {
		case r := <-ch:
			if pred(r) {
				return r
			}
		case <-c.n.exited:
			// The process may exit right after its last report (raw.js
			// does on a close): what it wrote before is all in ch by now.
			for len(ch) > 0 {
				if r := <-ch; pred(r) {
					return r
				}
			}
			c.t.Fatalf("node client exited before reporting %s", what)
		case <-timeout:
			c.t.Fatalf("client %s did not report %s within %v", c.name, what, graphqlWait)
		}
	}
}

// results collects n results of operation op, failing on an error, a
// completion or a close first.
func (c *gqlClient) results(op string, n int) []report {
	c.t.Helper()
	var out []report
	for len(out) < n {
		r := c.await("result "+op, func(r report) bool { return r.str("op") == op || r.has("closed") })
		switch {
		case r.has("closed"):
			c.t.Fatalf("%s: connection closed (%v %q) after %d of %d results of %s", c.name, r["closed"], r["reason"], len(out), n, op)
		case r.has("next"):
			out = append(out, r)
		case r.has("error"), r.has("complete"):
			c.t.Fatalf("%s: %s ended after %d of %d results: %v", c.name, op, len(out), n, r)
		}
	}
	return out
}

// quiet fails the test if op gets another result within d.
func (c *gqlClient) quiet(op string, d time.Duration) {
	c.t.Helper()
	timeout := time.After(d)
	ch := c.n.channel(c.name)
	for {
		select {
		case r := <-ch:
			if r.str("op") == op && r.has("next") {
				c.t.Fatalf("%s: %s got an unexpected result: %v", c.name, op, r["next"])
			}
		case <-timeout:
			return
		}
	}
}

// graphqlURL is a relay's /graphql endpoint.
func graphqlURL(base string) string {
	return "ws" + strings.TrimPrefix(base, "http") + "/graphql"
}

// gqlResult is one subscription result as a client received it.
type gqlResult struct {
	Data       map[string]map[string]any `json:"data"`
	Errors     []map[string]any          `json:"errors"`
	Extensions map[string]any            `json:"extensions"`
}

func decodeResult(t *testing.T, r report) gqlResult {
	t.Helper()
	b, _ := json.Marshal(r["next"])
	var out gqlResult
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("result %s: %v", b, err)
	}
	return out
}
