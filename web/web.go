// Package web holds the demo page served at GET /: plain HTML, CSS and
// JavaScript embedded in the binary, with no build step.
//
// The page signs in with a token taken from the URL fragment
// (#access_token=…, as `relay demo` prints it; a fragment never reaches
// server logs), or pasted by hand, or — on a relay in --insecure-dev mode —
// picked from the user list. It streams templates over EventSource or
// WebSocket and creates templates through POST /api/templates.
package web

import (
	"embed"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the demo page at / and its assets under /static/.
func Handler() http.Handler {
	files := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Everything the page needs is on its own origin; tokens never leave
		// it through a Referer.
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, static, "static/index.html")
			return
		}
		files.ServeHTTP(w, r)
	})
}
