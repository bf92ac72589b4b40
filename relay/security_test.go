package relay_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

// get sends GET /events?query with headers (each value its own header line,
// so a name may repeat) and returns the status and the JSON error.
func get(t *testing.T, base, query string, headers [][2]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/events?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		req.Header.Add(h[0], h[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var body struct{ Error string }
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err := json.Unmarshal(raw, &body); err != nil {
		return resp.StatusCode, string(raw)
	}
	return resp.StatusCode, body.Error
}

func signed(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// forged builds a token whose header names alg but whose signature is
// HMAC-SHA256 with the relay's secret: the classic algorithm confusion.
func forged(t *testing.T, alg string, claims jwt.MapClaims) string {
	t.Helper()
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"` + alg + `","typ":"JWT"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	unsigned := header + "." + base64.RawURLEncoding.EncodeToString(body)
	sig, err := jwt.SigningMethodHS256.Sign(unsigned, []byte(relaytest.Secret))
	if err != nil {
		t.Fatal(err)
	}
	if alg == "none" {
		return unsigned + "."
	}
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestHostileTokensAreRejectedWith401(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL, func(c *relay.Config) {
		c.JWTIssuer = "https://issuer.test"
		c.JWTAudience = "pgrelay"
	})
	now := time.Now()
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "zowi-1", "exp": now.Add(time.Hour).Unix(), "iss": "https://issuer.test", "aud": "pgrelay"}
		if edit != nil {
			edit(c)
		}
		return c
	}
	secret := []byte(relaytest.Secret)
	if status, msg := get(t, r.URL, "", [][2]string{{"Authorization", "Bearer " + signed(t, jwt.SigningMethodHS256, secret, claims(nil))}}); status != 200 {
		t.Fatalf("a well-formed token got %d %q; the cases below would prove nothing", status, msg)
	}
	cases := []struct{ name, token, want string }{
		{"alg none", forged(t, "none", claims(nil)), "unsupported signing algorithm"},
		{"HS512 with the relay's secret", signed(t, jwt.SigningMethodHS512, secret, claims(nil)), "unsupported signing algorithm"},
		{"RS256 header with an HMAC signature", forged(t, "RS256", claims(nil)), "unsupported signing algorithm"},
		{"missing sub", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { delete(c, "sub") })), "no sub"},
		{"nbf in the future", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })), "not valid yet"},
		{"expired", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() })), "expired"},
		{"wrong issuer", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.test" })), "wrong issuer"},
		{"wrong audience", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { c["aud"] = "other" })), "wrong audience"},
		{"no issuer", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { delete(c, "iss") })), "missing"},
		{"no exp, so it would never expire", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { delete(c, "exp") })), "no exp claim"},
		{"sub with a NUL character", signed(t, jwt.SigningMethodHS256, secret, claims(func(c jwt.MapClaims) { c["sub"] = "zowi-1\x00" })), "NUL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, how := range []struct {
				query   string
				headers [][2]string
			}{
				{"", [][2]string{{"Authorization", "Bearer " + c.token}}},
				{"access_token=" + url.QueryEscape(c.token), nil},
			} {
				status, msg := get(t, r.URL, how.query, how.headers)
				if status != http.StatusUnauthorized || !strings.Contains(msg, c.want) {
					t.Errorf("got %d %q, want 401 saying %q", status, msg, c.want)
				}
			}
		})
	}
}

func TestInsecureDevModeCannotBeTurnedOnByARequest(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	attempts := []struct {
		name    string
		query   string
		headers [][2]string
	}{
		{"user parameter", "user=zowi-1", nil},
		{"dev flags as parameters", "insecure_dev=1&insecure-dev=true&dev=1&user=zowi-1", nil},
		{"dev headers", "user=zowi-1", [][2]string{{"X-Insecure-Dev", "1"}, {"X-Relay-Insecure-Dev", "true"}, {"X-User", "zowi-1"}}},
		{"identity headers of proxies", "", [][2]string{{"X-Forwarded-User", "zowi-1"}, {"X-Remote-User", "zowi-1"}, {"Remote-User", "zowi-1"}}},
		{"empty bearer with a user parameter", "user=zowi-1", [][2]string{{"Authorization", "Bearer "}}},
	}
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			if status, msg := get(t, r.URL, a.query, a.headers); status != http.StatusUnauthorized {
				t.Errorf("got %d %q, want 401", status, msg)
			}
		})
	}

	// In dev mode ?user= works, but never overrides a token that is there
	// and bad.
	dev := relaytest.Start(t, db.URL, func(c *relay.Config) { c.InsecureDev = true; c.JWTSecret = "" })
	if status, msg := get(t, dev.URL, "user=zowi-1", nil); status != http.StatusOK {
		t.Fatalf("dev mode with ?user=: got %d %q, want 200", status, msg)
	}
	if status, msg := get(t, dev.URL, "user=zowi-1", [][2]string{{"Authorization", "Bearer a.b.c"}}); status != http.StatusUnauthorized {
		t.Errorf("dev mode with a bad token and ?user=: got %d %q, want 401", status, msg)
	}
}

func TestHostileRequestsGet4xxAndTheRelayKeepsServing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	r := relaytest.Start(t, db.URL)
	token := relaytest.Token(t, "zowi-1")
	other := relaytest.Token(t, "zewi-1")
	bearer := [2]string{"Authorization", "Bearer " + token}
	id1, id2 := "00000000000000ab-0000000000000001", "00000000000000ab-0000000000000002"
	many := strings.Repeat("topic=templates&", 65)
	cases := []struct {
		name    string
		query   string
		headers [][2]string
		status  int
		want    string
	}{
		{"65 topic parameters", many, [][2]string{bearer}, 400, "at most 64"},
		{"64 topic parameters are fine", strings.Repeat("topic=templates&", 64), [][2]string{bearer}, 200, ""},
		{"a 500 KB query string", "topic=" + strings.Repeat("a", 500<<10), [][2]string{bearer}, 400, "not a valid topic name"},
		{"a unicode topic", "topic=" + url.QueryEscape("témplates"), [][2]string{bearer}, 400, "not a valid topic name"},
		{"an emoji topic", "topic=" + url.QueryEscape("💥"), [][2]string{bearer}, 400, "not a valid topic name"},
		{"a NUL byte in a topic", "topic=templates%00", [][2]string{bearer}, 400, "not a valid topic name"},
		{"a NUL byte in last_event_id", "last_event_id=" + id1[:32] + "%00", [][2]string{bearer}, 400, "malformed event id"},
		{"upper-case hex in Last-Event-ID", "", [][2]string{bearer, {"Last-Event-ID", strings.ToUpper(id1)}}, 400, "malformed event id"},
		{"a huge Last-Event-ID", "", [][2]string{bearer, {"Last-Event-ID", strings.Repeat("f", 100<<10)}}, 400, "malformed event id"},
		{"a malformed percent escape in topic", "topic=%zz", [][2]string{bearer}, 400, "query string"},
		{"a malformed percent escape in last_event_id", "last_event_id=" + id1 + "%zz", [][2]string{bearer}, 400, "query string"},
		{"a semicolon separator", "topic=templates;last_event_id=" + id1, [][2]string{bearer}, 400, "query string"},
		{"two different Last-Event-ID headers", "", [][2]string{bearer, {"Last-Event-ID", id1}, {"Last-Event-ID", id2}}, 400, "conflicting"},
		{"the same Last-Event-ID twice", "", [][2]string{bearer, {"Last-Event-ID", id1}, {"Last-Event-ID", id1}}, 200, ""},
		{"two different last_event_id parameters", "last_event_id=" + id1 + "&last_event_id=" + id2, [][2]string{bearer}, 400, "conflicting"},
		{"two Authorization headers", "", [][2]string{bearer, {"Authorization", "Bearer " + other}}, 401, "more than one Authorization"},
		{"two access_token parameters", "access_token=" + token + "&access_token=" + other, nil, 401, "more than one access_token"},
		{"different tokens in header and parameter", "access_token=" + other, [][2]string{bearer}, 401, "different tokens"},
		{"a Bearer header without a token", "", [][2]string{{"Authorization", "Bearer"}}, 401, "Bearer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, msg := get(t, r.URL, c.query, c.headers)
			if status != c.status || !strings.Contains(msg, c.want) {
				t.Errorf("got %d %q, want %d saying %q", status, truncateForLog(msg), c.status, c.want)
			}
		})
	}

	// What net/http refuses before the relay sees it still gets a 4xx.
	raw := []struct{ name, request string }{
		{"a NUL byte in a header", "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\nLast-Event-ID: a\x00b\r\n\r\n"},
		{"a 2 MB request line", "GET /events?topic=" + strings.Repeat("a", 2<<20) + " HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"2 MB of headers", "GET /events HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 2048) + "\r\n"},
	}
	for _, c := range raw {
		t.Run(c.name, func(t *testing.T) {
			if status := rawStatus(t, r.URL, c.request); status < 400 || status > 499 {
				t.Errorf("got status %d, want 4xx", status)
			}
		})
	}

	// After all that, the relay still serves.
	relaytest.InsertTemplate(t, db, "still alive", "zolo-1", "loc-1")
	c := relaytest.Subscribe(t, r.URL, token, relaytest.SSEOptions{LastEventID: "0000000000000000-0000000000000000"})
	if got := names(t, c.Collect(t, 1, 10*time.Second)); got[0] != "still alive" {
		t.Fatalf("after hostile requests got %q, want still alive", got)
	}
}

func truncateForLog(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// rawStatus writes request on a plain TCP connection and returns the status
// code of the answer (0 if the relay just closed the connection).
func rawStatus(t *testing.T, base, request string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	// The server may answer and close before reading everything: a write
	// error after that is expected.
	go func() { _, _ = io.Copy(conn, strings.NewReader(request)) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestLogsCarryNoTokenAndNoRowContent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	var logs relaytest.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := relaytest.StartLogging(t, db.URL, log)
	token := relaytest.Token(t, "zowi-1")
	secretRow := fmt.Sprintf("confidential-row-%d", time.Now().UnixNano())

	// A stream by header and one by query parameter, a delivered row, and
	// failures whose inputs carry secrets too.
	c := relaytest.Subscribe(t, r.URL, token, relaytest.SSEOptions{})
	resp, err := http.Get(r.URL + "/events?access_token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.InsertTemplate(t, db, secretRow, "zolo-1", "loc-1")
	if got := names(t, c.Collect(t, 1, 10*time.Second)); got[0] != secretRow {
		t.Fatalf("got %q, want the row", got)
	}
	resp.Body.Close()
	badToken := signed(t, jwt.SigningMethodHS256, []byte("not-the-secret-0123456789"), jwt.MapClaims{"sub": "zowi-1", "leak": secretRow})
	get(t, r.URL, "", [][2]string{{"Authorization", "Bearer " + badToken}})
	get(t, r.URL, "topic=secret_"+strings.Repeat("s", 10), [][2]string{{"Authorization", "Bearer " + token}})
	get(t, r.URL, "last_event_id="+secretRow, [][2]string{{"Authorization", "Bearer " + token}})
	c.Close()
	relaytest.Eventually(t, 10*time.Second, "streams closed and logged", func() bool {
		return strings.Count(logs.String(), "stream closed") >= 2
	})

	out := logs.String()
	if !strings.Contains(out, "stream opened") {
		t.Fatalf("the relay logged nothing about streams; the check below would prove nothing:\n%s", out)
	}
	for what, secret := range map[string]string{
		"a valid token": token, "a token's signature": token[strings.LastIndex(token, ".")+1:],
		"a rejected token": badToken, "row content": secretRow, "the signing secret": relaytest.Secret,
	} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs contain %s:\n%s", what, out)
		}
	}
}
