package demo_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/examples/templates/demo"
	"github.com/pgrelay/pgrelay/internal/relaytest"
)

// startDemo runs a demo on its own database (never pgrelay_demo, which a
// developer's demo may be using) and free ports, until the test ends.
func startDemo(t *testing.T, mutate func(*demo.Config)) (*demo.Demo, *relaytest.Buffer) {
	t.Helper()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	cfg := demo.DefaultConfig()
	cfg.DatabaseURL = os.Getenv("TEST_DATABASE_URL")
	cfg.Database = "pgrelay_demo_test_" + hex.EncodeToString(suffix)
	cfg.BasePort = 0
	cfg.Quiet = true
	if mutate != nil {
		mutate(&cfg)
	}
	t.Cleanup(func() {
		if err := demo.DropDatabase(context.Background(), cfg); err != nil {
			t.Errorf("drop demo database: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	d, err := demo.Setup(ctx, cfg, relaytest.Logger())
	if err != nil {
		cancel()
		t.Fatalf("set up demo: %v", err)
	}
	out := &relaytest.Buffer{}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo stopped with error: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("demo did not stop within 20s of cancellation")
		}
	})
	for _, u := range d.RelayURLs() {
		relaytest.Eventually(t, 20*time.Second, u+" ready", func() bool {
			resp, err := http.Get(u + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	return d, out
}

func TestDemoSeedsTheStoryAndServesOneLinkPerUserOnFourRelays(t *testing.T) {
	t.Parallel()
	d, out := startDemo(t, nil)

	relays := d.RelayURLs()
	if len(relays) != 4 {
		t.Fatalf("%d relays, want 4", len(relays))
	}
	users := map[string]demo.User{}
	types := map[string]int{}
	for i, u := range d.Users() {
		users[u.ID] = u
		if u.Org == "Acme" {
			types[u.Type]++
		}
		if want := relays[i%4]; u.Relay != want {
			t.Errorf("user %d (%s) on %s, want %s: consecutive users on different relays", i, u.ID, u.Relay, want)
		}
		if !strings.HasPrefix(u.URL, u.Relay+"/#access_token=") || !strings.Contains(out.String(), u.URL) {
			t.Errorf("%s: link %q is not a sign-in link printed by the demo", u.ID, u.URL)
		}
	}
	if types["ZOWI"] != 2 || types["ZOLO"] != 1 || types["ZEWI"] != 1 || types["ZELO"] != 1 {
		t.Errorf("Acme users by type %v, want two ZOWI and one each of ZOLO, ZEWI, ZELO", types)
	}

	// One insert, through plain SQL like any producer, reaches exactly its
	// audience across the relays.
	clients := map[string]*relaytest.SSE{}
	for id, u := range users {
		clients[id] = relaytest.Subscribe(t, u.Relay, u.Token, relaytest.SSEOptions{})
	}
	conn, err := pgx.Connect(context.Background(), d.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('Paris menu', '{loc-2}', 'zolo-1')`); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"zowi-1", "zowi-2", "zewi-1", "zelo-1"} {
		e := clients[id].Next(t, 30*time.Second)
		var row struct{ Name string }
		_ = json.Unmarshal([]byte(e.Data), &row)
		if row.Name != "Paris menu" {
			t.Errorf("%s received %+v, want Paris menu", id, e)
		}
	}
	for _, id := range []string{"zolo-1", "zowi-9"} { // the creator; the other org
		clients[id].Quiet(t, 300*time.Millisecond)
	}
}

func TestDemoGeneratesTemplatesFromRotatingUsers(t *testing.T) {
	t.Parallel()
	d, out := startDemo(t, func(c *demo.Config) {
		c.Quiet = false
		c.Interval = 100 * time.Millisecond
	})
	var omar demo.User
	for _, u := range d.Users() {
		if u.ID == "zowi-2" {
			omar = u
		}
	}
	// Omar (ZOWI) receives everything created in Acme but his own.
	c := relaytest.Subscribe(t, omar.Relay, omar.Token, relaytest.SSEOptions{})
	seen := map[string]bool{}
	for len(seen) < 3 {
		var row struct {
			CreatedBy string `json:"created_by"`
		}
		_ = json.Unmarshal([]byte(c.Next(t, 30*time.Second).Data), &row)
		if row.CreatedBy == "zowi-2" || row.CreatedBy == "zowi-9" {
			t.Fatalf("Omar received a template by %s", row.CreatedBy)
		}
		seen[row.CreatedBy] = true
	}
	if !strings.Contains(out.String(), "shared \"") {
		t.Errorf("demo output has no generated template lines:\n%s", out.String())
	}
}

func TestDemoWithoutAServerSaysHowToStartOne(t *testing.T) {
	t.Parallel()
	cfg := demo.DefaultConfig()
	cfg.DatabaseURL = "host=127.0.0.1 port=1 connect_timeout=5"
	_, err := demo.Setup(context.Background(), cfg, relaytest.Logger())
	if err == nil {
		t.Fatal("Setup succeeded without a server")
	}
	for _, want := range []string{"cannot reach PostgreSQL at 127.0.0.1:1", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start", "DATABASE_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
