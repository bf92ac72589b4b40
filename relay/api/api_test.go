package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

func do(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, url, ct)
	}
	return resp.StatusCode, b
}

func errorOf(t *testing.T, body []byte) string {
	t.Helper()
	var e map[string]string
	if err := json.Unmarshal(body, &e); err != nil || e["error"] == "" {
		t.Fatalf("body %s, want {\"error\": \"...\"}", body)
	}
	return e["error"]
}

func TestCreateTemplateInsertsAsTheTokenSubjectAndReachesTheAudienceOnly(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.WriteAPI = true })
	elsa := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zelo-1"), relaytest.SSEOptions{})
	emil := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})

	status, body := do(t, http.MethodPost, r.URL+"/api/templates", relaytest.Token(t, "zewi-1"),
		`{"name":"  Winter menu ","share_location_ids":["loc-2"]}`)
	if status != http.StatusCreated {
		t.Fatalf("status %d, want 201: %s", status, body)
	}
	var row struct {
		ID               string   `json:"id"`
		Name             string   `json:"name"`
		ShareLocationIDs []string `json:"share_location_ids"`
		CreatedBy        string   `json:"created_by"`
		CreatedAt        string   `json:"created_at"`
	}
	if err := json.Unmarshal(body, &row); err != nil {
		t.Fatalf("body is not the row: %v: %s", err, body)
	}
	if row.ID == "" || row.Name != "Winter menu" || row.CreatedBy != "zewi-1" || !slices.Equal(row.ShareLocationIDs, []string{"loc-2"}) || row.CreatedAt == "" {
		t.Fatalf("row %+v, want Winter menu by zewi-1 shared with loc-2", row)
	}
	e := elsa.Next(t, 10*time.Second)
	var delivered map[string]any
	_ = json.Unmarshal([]byte(e.Data), &delivered)
	if e.Event != "templates" || delivered["id"] != row.ID {
		t.Fatalf("elsa received %+v, want the created template %s", e, row.ID)
	}
	emil.Quiet(t, 300*time.Millisecond) // nobody receives their own
}

func TestCreateTemplateRefusals(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.WriteAPI = true })
	olga := relaytest.Token(t, "zowi-1")
	cases := []struct {
		name, token, body string
		wantStatus        int
		wantError         string
	}{
		{"unknown location", olga, `{"name":"x","share_location_ids":["loc-1","loc-404","loc-405"]}`, 400, "unknown location id(s) in share_location_ids: loc-404, loc-405"},
		{"no name", olga, `{"name":"  ","share_location_ids":[]}`, 400, "name is required"},
		{"name too long", olga, `{"name":"` + strings.Repeat("n", 201) + `"}`, 400, "longer than 200"},
		{"empty location id", olga, `{"name":"x","share_location_ids":[""]}`, 400, "empty id"},
		{"unknown field", olga, `{"name":"x","created_by":"zowi-2"}`, 400, "unknown field"},
		{"not JSON", olga, `name=x`, 400, "JSON"},
		{"no token", "", `{"name":"x"}`, 401, "missing token"},
		{"bad token", "garbage", `{"name":"x"}`, 401, "malformed"},
		{"unknown user", relaytest.Token(t, "nobody"), `{"name":"x"}`, 403, "not a known subscriber"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := do(t, http.MethodPost, r.URL+"/api/templates", tc.token, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tc.wantStatus, body)
			}
			if got := errorOf(t, body); !strings.Contains(got, tc.wantError) {
				t.Errorf("error %q, want it to contain %q", got, tc.wantError)
			}
		})
	}
	var n int
	if err := db.Pool.QueryRow(t.Context(), "SELECT count(*) FROM templates").Scan(&n); err != nil || n != 0 {
		t.Errorf("templates after refusals: %d (%v), want 0", n, err)
	}
}

func TestMeDescribesTheSubjectAndItsOrgOnly(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.WriteAPI = true })
	status, body := do(t, http.MethodGet, r.URL+"/api/me", relaytest.Token(t, "zelo-1"), "")
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var me struct {
		User struct {
			ID, Name, UserType, OrgName, LocationID string
		}
		Locations []struct{ ID, Name string }
		People    []struct{ ID, Name string }
	}
	if err := json.Unmarshal(body, &me); err != nil {
		t.Fatal(err)
	}
	var locs, people []string
	for _, l := range me.Locations {
		locs = append(locs, l.ID)
	}
	for _, p := range me.People {
		people = append(people, p.ID)
	}
	if me.User.ID != "zelo-1" || me.User.Name != "Elsa" {
		t.Errorf("user %+v, want zelo-1 Elsa", me.User)
	}
	if want := []string{"loc-1", "loc-2", "loc-3"}; !slices.Equal(locs, want) {
		t.Errorf("locations %q, want %q (sorted by name: Berlin, Paris, Rome)", locs, want)
	}
	if want := []string{"zelo-1", "zewi-1", "zolo-1", "zowi-1", "zowi-2"}; !slices.Equal(slices.Sorted(slices.Values(people)), want) {
		t.Errorf("people %q, want the org's users %q", people, want)
	}
	if status, body := do(t, http.MethodGet, r.URL+"/api/me", relaytest.Token(t, "nobody"), ""); status != http.StatusForbidden {
		t.Errorf("unknown user: status %d, want 403: %s", status, body)
	}
}

func TestUserListIsServedOnlyInInsecureDevMode(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	secure := relaytest.Start(t, db.URL)
	dev := relaytest.Start(t, db.URL, func(c *relay.Config) { c.InsecureDev = true; c.WriteAPI = true })

	if status, body := do(t, http.MethodGet, secure.URL+"/api/users", "", ""); status != http.StatusNotFound {
		t.Errorf("secure relay: status %d, want 404: %s", status, body)
	}
	status, body := do(t, http.MethodGet, dev.URL+"/api/users", "", "")
	if status != http.StatusOK {
		t.Fatalf("dev relay: status %d: %s", status, body)
	}
	var users []struct{ ID string }
	if err := json.Unmarshal(body, &users); err != nil || len(users) != 7 {
		t.Fatalf("dev relay listed %s (%v), want the 7 seeded users", body, err)
	}
	// In dev mode the API accepts ?user=ID like the streams do.
	status, body = do(t, http.MethodPost, dev.URL+"/api/templates?user=zolo-1", "", `{"name":"dev"}`)
	var row struct {
		CreatedBy string `json:"created_by"`
	}
	if _ = json.Unmarshal(body, &row); status != http.StatusCreated || row.CreatedBy != "zolo-1" {
		t.Errorf("dev create: %d %s, want 201 created_by zolo-1", status, body)
	}
}

func TestTheWriteAPIIsOffUnlessEnabledAndThePageKnows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	token := relaytest.Token(t, "zewi-1")
	status, body := do(t, http.MethodPost, r.URL+"/api/templates", token, `{"name":"should not exist","share_location_ids":["loc-1"]}`)
	if status != http.StatusNotFound || !strings.Contains(string(body), "--write-api") {
		t.Fatalf("POST /api/templates without --write-api: %d %s, want 404 naming the flag", status, body)
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM templates").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d templates (%v), want none", n, err)
	}
	if status, body := do(t, http.MethodGet, r.URL+"/api/me", token, ""); status != http.StatusOK || writeAPI(t, body) {
		t.Errorf("GET /api/me: %d %s, want 200 saying write_api is false", status, body)
	}
	w := relaytest.Start(t, db.URL, func(c *relay.Config) { c.WriteAPI = true })
	if status, body := do(t, http.MethodGet, w.URL+"/api/me", token, ""); status != http.StatusOK || !writeAPI(t, body) {
		t.Errorf("GET /api/me with --write-api: %d %s, want write_api true", status, body)
	}
}

// writeAPI reads write_api from a /api/me body.
func writeAPI(t *testing.T, body []byte) bool {
	t.Helper()
	var me struct {
		WriteAPI *bool `json:"write_api"`
	}
	if err := json.Unmarshal(body, &me); err != nil || me.WriteAPI == nil {
		t.Fatalf("/api/me body %s has no write_api (%v)", body, err)
	}
	return *me.WriteAPI
}
