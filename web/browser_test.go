package web_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// chromiumPath is Debian's chromium, which CI installs.
const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium with a fresh profile for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the browser test needs Chromium at %s (%v); install it with:\n"+
			"  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	// The first action starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	return ctx
}

// tab opens url in a new tab of the browser.
func tab(t *testing.T, browser context.Context, url string) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	return ctx
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func get[T any](t *testing.T, ctx context.Context, what string, action chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, action)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// live waits until the page's connection state reads text.
func live(text string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](`document.getElementById("state").textContent === ` + strconv.Quote(text))
}

// count returns how many feed items carry name.
func count(name string) chromedp.Action[int] {
	return chromedp.Evaluate[int](`document.querySelectorAll('#feed li[data-name="` + name + `"]').length`)
}

func TestDemoPagesShareATemplateAcrossRelaysAndTransports(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	// Relay A serves the write API, relay B does not: its page is read-only.
	relayA := relaytest.Start(t, db.URL, func(c *relay.Config) { c.WriteAPI = true })
	relayB := relaytest.Start(t, db.URL)
	b := browser(t)

	// Emil (ZEWI: every location of Acme) on relay A over EventSource; Elsa
	// (ZELO at Paris) on relay B over WebSocket.
	emil := tab(t, b, relayA.URL+"/#access_token="+relaytest.Token(t, "zewi-1"))
	elsa := tab(t, b, relayB.URL+"/#access_token="+relaytest.Token(t, "zelo-1"))
	do(t, emil, "Emil's page goes live over EventSource", live("live · EventSource"))
	do(t, elsa, "Elsa's page switches to WebSocket and goes live",
		live("live · EventSource"),
		chromedp.Click(chromedp.CSS(`#transport-ws`)),
		live("live · WebSocket"))

	if fragment := get(t, emil, "read Emil's address bar", chromedp.Evaluate[string](`location.hash`)); fragment != "" {
		t.Errorf("the token stayed in the address bar: %q", fragment)
	}

	if hidden := get(t, elsa, "look for Elsa's create form", chromedp.Evaluate[bool](`document.getElementById("create-card").hidden`)); !hidden {
		t.Error("the page on a relay without --write-api offers to create templates")
	}
	do(t, emil, "Emil shares a template with Paris",
		chromedp.SendKeys(chromedp.CSS(`#create-name`), "Paris autumn menu"),
		chromedp.Click(chromedp.CSS(`#create-locations input[value="loc-2"]`)),
		chromedp.Click(chromedp.CSS(`#create-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`#create-result.ok`)))
	do(t, elsa, "Elsa's page shows it", chromedp.WaitVisible(chromedp.CSS(`#feed li[data-name="Paris autumn menu"]`)))
	creator := get(t, elsa, "read the creator", chromedp.Text(chromedp.CSS(`#feed li[data-name="Paris autumn menu"] .meta span`)))
	if creator != "by Emil (zewi-1)" {
		t.Errorf("Elsa's page shows the creator as %q, want \"by Emil (zewi-1)\"", creator)
	}

	// A later template Emil does receive: once it is on his page, the
	// earlier one would be too, had it been delivered (events arrive in
	// order).
	relaytest.InsertTemplate(t, db, "Berlin marker", "zolo-1", "loc-1")
	do(t, emil, "Emil's page shows the later template", chromedp.WaitVisible(chromedp.CSS(`#feed li[data-name="Berlin marker"]`)))
	if own := get(t, emil, "count Emil's own template", count("Paris autumn menu")); own != 0 {
		t.Errorf("Emil's page shows his own template %d time(s); nobody receives their own", own)
	}
	if n := get(t, elsa, "count Elsa's Berlin templates", count("Berlin marker")); n != 0 {
		t.Errorf("Elsa (Paris) received a template shared with Berlin only")
	}

	shot := get(t, elsa, "screenshot", chromedp.FullScreenshot(100)) // quality 100 gives a PNG
	for _, dir := range []string{t.TempDir(), os.Getenv("PGRELAY_SCREENSHOT_DIR")} {
		if dir == "" {
			continue
		}
		path := filepath.Join(dir, "demo-elsa.png")
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			t.Fatalf("save screenshot: %v", err)
		}
		t.Logf("screenshot: %s", path)
	}
}
