// Package api is the small HTTP API the demo page uses to act as the
// template-sharing app: who am I, and create a template as me.
//
// It is a producer like any other: a template is created with a plain SQL
// INSERT, so its event travels the same path (trigger → relay.events →
// every relay) as an insert from any other client. Authentication is the
// streams' own (relay/auth), with the same 401/403 JSON answers.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/relay/auth"
	"github.com/pgrelay/pgrelay/relay/httpjson"
	"github.com/pgrelay/pgrelay/relay/stream"
)

// The API's queries, in one place.
const (
	insertTemplateSQL = `
INSERT INTO public.templates (name, share_location_ids, created_by)
VALUES ($1, $2, $3)
RETURNING to_jsonb(templates.*)`

	meSQL = `
SELECT jsonb_build_object(
    'user', jsonb_build_object(
        'id', u.id, 'name', u.name, 'user_type', u.user_type, 'org_id', u.org_id,
        'org_name', o.name, 'location_id', u.location_id),
    'locations', coalesce((SELECT jsonb_agg(jsonb_build_object('id', l.id, 'name', l.name) ORDER BY l.name, l.id)
                             FROM public.locations l WHERE l.org_id = u.org_id), '[]'),
    'people', coalesce((SELECT jsonb_agg(jsonb_build_object('id', p.id, 'name', p.name, 'user_type', p.user_type) ORDER BY p.name, p.id)
                          FROM public.users p WHERE p.org_id = u.org_id), '[]'))
         || jsonb_build_object('write_api', $2::boolean)
  FROM public.users u JOIN public.orgs o ON o.id = u.org_id
 WHERE u.id = $1`

	usersSQL = `
SELECT coalesce(jsonb_agg(jsonb_build_object(
           'id', u.id, 'name', u.name, 'user_type', u.user_type,
           'org_id', u.org_id, 'org_name', o.name) ORDER BY o.name, u.name, u.id), '[]')
  FROM public.users u JOIN public.orgs o ON o.id = u.org_id`
)

// createdByConstraint is the foreign key of templates.created_by: violating
// it means the token's subject is not a user.
const createdByConstraint = "templates_created_by_fkey"

// Limits on a new template, checked before the database sees it.
const (
	maxBody      = 64 << 10
	maxNameRunes = 200
	maxLocations = 1000
)

// Querier runs the API's statements: a pool or a connection.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Handler serves /api/…:
//
//	POST /api/templates  create a template as the token's subject (only with Write)
//	GET  /api/me         the subject's profile, its org's locations and people
//	GET  /api/users      every user (only with ListUsers: --insecure-dev)
type Handler struct {
	Auth *auth.Verifier
	DB   Querier
	Log  *slog.Logger
	// ListUsers enables GET /api/users. The user directory is not public:
	// only a development relay lists it, so its demo page can offer a user
	// picker.
	ListUsers bool
	// Write enables POST /api/templates (relay --write-api; `relay demo`
	// turns it on). Off, the demo page is read-only: inserting is the
	// application's job, not the relay's.
	Write bool
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/api/templates" && r.Method == http.MethodPost && !h.Write:
		stream.WriteError(w, http.StatusNotFound, errors.New("the write API is not enabled on this relay (start it with --write-api)"))
	case r.URL.Path == "/api/templates" && r.Method == http.MethodPost:
		h.createTemplate(w, r)
	case r.URL.Path == "/api/me" && r.Method == http.MethodGet:
		h.me(w, r)
	case r.URL.Path == "/api/users" && r.Method == http.MethodGet:
		h.users(w, r)
	case r.URL.Path == "/api/templates" || r.URL.Path == "/api/me" || r.URL.Path == "/api/users":
		stream.WriteError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s", r.Method, r.URL.Path))
	default:
		stream.WriteError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s", r.URL.Path))
	}
}

// NewTemplate is the body of POST /api/templates.
type NewTemplate struct {
	Name             string   `json:"name"`
	ShareLocationIDs []string `json:"share_location_ids"`
}

// Validate names what is wrong with t, if anything.
func (t NewTemplate) Validate() error {
	name := strings.TrimSpace(t.Name)
	switch {
	case name == "":
		return errors.New("name is required")
	case utf8.RuneCountInString(name) > maxNameRunes:
		return fmt.Errorf("name is longer than %d characters", maxNameRunes)
	case len(t.ShareLocationIDs) > maxLocations:
		return fmt.Errorf("share_location_ids has more than %d ids", maxLocations)
	}
	for _, id := range t.ShareLocationIDs {
		if strings.TrimSpace(id) == "" {
			return errors.New("share_location_ids contains an empty id")
		}
	}
	return nil
}

func (h *Handler) createTemplate(w http.ResponseWriter, r *http.Request) {
	subject, err := h.Auth.Subject(r)
	if err != nil {
		stream.WriteError(w, stream.Status(err), err)
		return
	}
	var t NewTemplate
	if err := decode(r, &t); err != nil {
		stream.WriteError(w, http.StatusBadRequest, err)
		return
	}
	if err := t.Validate(); err != nil {
		stream.WriteError(w, http.StatusBadRequest, err)
		return
	}
	if t.ShareLocationIDs == nil {
		t.ShareLocationIDs = []string{}
	}
	var row json.RawMessage
	err = h.DB.QueryRow(r.Context(), insertTemplateSQL, strings.TrimSpace(t.Name), t.ShareLocationIDs, subject).Scan(&row)
	if err != nil {
		status, err := insertError(subject, err)
		if status == http.StatusInternalServerError {
			h.Log.Error("create template", "user", subject, "err", err)
		}
		stream.WriteError(w, status, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, row)
}

// insertError maps a failed insert to an HTTP status: the database's own
// message for data it refuses (unknown locations), 403 for a subject that is
// not a user.
func insertError(subject string, err error) (int, error) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return http.StatusInternalServerError, fmt.Errorf("insert template: %w", err)
	}
	if pgErr.Code == "23503" && pgErr.ConstraintName == createdByConstraint {
		return http.StatusForbidden, fmt.Errorf("%w: %q", stream.ErrUnknownSubscriber, subject)
	}
	switch pgErr.Code[:2] {
	case "22", "23": // data exception, integrity constraint violation
		return http.StatusBadRequest, errors.New(pgErr.Message)
	}
	return http.StatusInternalServerError, fmt.Errorf("insert template: %w", err)
}

func (h *Handler) me(w http.ResponseWriter, r *http.Request) {
	subject, err := h.Auth.Subject(r)
	if err != nil {
		stream.WriteError(w, stream.Status(err), err)
		return
	}
	var body json.RawMessage
	err = h.DB.QueryRow(r.Context(), meSQL, subject, h.Write).Scan(&body)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		stream.WriteError(w, http.StatusForbidden, fmt.Errorf("%w: %q", stream.ErrUnknownSubscriber, subject))
	case err != nil:
		h.Log.Error("load profile", "user", subject, "err", err)
		stream.WriteError(w, http.StatusInternalServerError, err)
	default:
		httpjson.Write(w, http.StatusOK, body)
	}
}

func (h *Handler) users(w http.ResponseWriter, r *http.Request) {
	if !h.ListUsers {
		stream.WriteError(w, http.StatusNotFound, errors.New("the user list is only served by a relay in --insecure-dev mode"))
		return
	}
	var body json.RawMessage
	if err := h.DB.QueryRow(r.Context(), usersSQL).Scan(&body); err != nil {
		h.Log.Error("list users", "err", err)
		stream.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	httpjson.Write(w, http.StatusOK, body)
}

// decode reads one JSON object into v, refusing unknown fields and bodies
// over maxBody.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return fmt.Errorf("Content-Type must be application/json, got %q", ct)
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body must be a JSON object {\"name\": \"…\", \"share_location_ids\": [\"…\"]} (at most %d bytes): %w", maxBody, err)
	}
	if dec.More() {
		return errors.New("body must hold a single JSON object")
	}
	return nil
}
