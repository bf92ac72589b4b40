package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/web"
)

func TestPageAndAssetsAreServedWithALockedDownPolicy(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(web.Handler())
	defer srv.Close()
	for _, tc := range []struct{ path, contentType, contains string }{
		{"/", "text/html", "pgrelay demo"},
		{"/static/app.js", "javascript", "EventSource"},
		{"/static/style.css", "text/css", ":root"},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), tc.contentType) || !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: %d %q, want 200 %s containing %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.contentType, tc.contains)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", tc.path, csp)
		}
	}
	if resp, err := http.Get(srv.URL + "/static/nope.js"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET a missing asset: %v %v, want 404", resp.StatusCode, err)
	}
}
