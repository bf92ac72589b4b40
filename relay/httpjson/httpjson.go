// Package httpjson writes the relay's JSON answers: every endpoint, every
// refusal and every error body goes through it, so they all carry the same
// headers.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// Write answers with status and v as JSON (a json.RawMessage is written as
// it is). Answers are never cached: they describe one request's outcome.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// Error answers with status and a body {"error": msg}.
func Error(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pgrelay"`)
	}
	Write(w, status, map[string]string{"error": msg})
}
