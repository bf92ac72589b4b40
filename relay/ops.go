package relay

import (
	"net/http"

	"github.com/go-chi/cors"
)

// corsMiddleware lets browsers on the configured origins read the event
// stream and the JSON endpoints. Without configured origins it adds nothing:
// only same-origin pages may read responses.
func (s *Server) corsMiddleware() func(http.Handler) http.Handler {
	if len(s.cfg.CORSOrigins) == 0 {
		// go-chi/cors treats an empty list as "any origin": never hand it one.
		return func(next http.Handler) http.Handler { return next }
	}
	return cors.Handler(cors.Options{
		AllowedOrigins: s.cfg.CORSOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodHead, http.MethodOptions},
		// EventSource sends Last-Event-ID on reconnect; fetch-based clients
		// send Authorization.
		AllowedHeaders: []string{"Authorization", "Last-Event-ID", "Cache-Control", "Content-Type"},
		ExposedHeaders: []string{"Retry-After"},
		// Tokens travel in headers or the query, never in cookies.
		AllowCredentials: false,
		MaxAge:           600,
	})
}
