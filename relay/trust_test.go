package relay_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
	"github.com/pgrelay/pgrelay/relay/eventlog"
	"github.com/pgrelay/pgrelay/relay/filter"
	"github.com/pgrelay/pgrelay/relay/sequencer"
)

// The attacks below run with the roles docs/roles.sql gives a deployment:
// relays log in as the relay's role, the app inserts as a producer, and the
// attacker is a producer or an unrelated login, never a superuser.

// session connects to url and closes the connection when the test ends.
func session(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// denied fails the test unless sql fails with insufficient privilege.
func denied(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	_, err := conn.Exec(context.Background(), sql, args...)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("%s: got %v, want permission denied", sql, err)
	}
}

func insertAs(t *testing.T, conn *pgx.Conn, name, createdBy, location string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ($1, ARRAY[$2], $3)`,
		name, location, createdBy); err != nil {
		t.Fatalf("insert template %q: %v", name, err)
	}
}

func TestAProducerPublishesThroughItsRowsAloneAndCannotWriteOrReadTheLog(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	r := relaytest.Start(t, roles.RelayURL)
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	producer := session(t, roles.ProducerURL)

	insertAs(t, producer, "published by the producer", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 10*time.Second)); got[0] != "published by the producer" {
		t.Fatalf("received %q, want the producer's template", got)
	}
	// Changing users fires the filter-change triggers, which run as their
	// owner too.
	if _, err := producer.Exec(context.Background(), `UPDATE users SET name = name || '!' WHERE id = 'zolo-1'`); err != nil {
		t.Fatalf("a producer updating a user: %v", err)
	}

	for _, sql := range []string{
		`INSERT INTO relay.events (topic, payload, audience) VALUES ('templates', '{"id":"forged"}', '{location:loc-1}')`,
		`SELECT payload FROM relay.events`,
		`SELECT key FROM relay.announcement_key`,
		`UPDATE relay.sequencer SET holder_pid = pg_backend_pid()`,
		`DELETE FROM relay.events`,
		`SELECT relay.create_topic('forged', 'public.templates', 'relay.templates_audience(public.templates)', 'relay.templates_subscriber_keys(text)')`,
		`SELECT * FROM relay.filters(ARRAY['zowi-1'])`,
		`SELECT relay.capture_templates()`,
	} {
		denied(t, producer, sql)
	}
	client.Quiet(t, 300*time.Millisecond)
}

func TestAnUnrelatedLoginCannotTakeOverTheSequencerWhenItsSessionDrops(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	a := relaytest.Start(t, roles.RelayURL, func(c *relay.Config) { c.SafetyPoll = time.Hour })
	b := relaytest.Start(t, roles.RelayURL, func(c *relay.Config) { c.SafetyPoll = time.Hour })
	leader := func() int {
		n := 0
		for _, r := range []*relaytest.Relay{a, b} {
			if readyz(t, r.URL)["sequencer"] == true {
				n++
			}
		}
		return n
	}
	relaytest.Eventually(t, 10*time.Second, "one relay is the sequencer", func() bool { return leader() == 1 })
	client := relaytest.Subscribe(t, b.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	producer := session(t, roles.ProducerURL)
	attacker := session(t, roles.LoginURL)

	// What took the role before: the advisory lock anyone may take.
	if _, err := attacker.Exec(context.Background(), "SELECT pg_advisory_lock($1)", int64(0x7067_7273_6571)); err != nil {
		t.Fatal(err)
	}
	denied(t, attacker, `UPDATE relay.sequencer SET holder_pid = pg_backend_pid()`)
	denied(t, attacker, `SELECT holder_pid FROM relay.sequencer`)

	// The sequencer's session drops; the attacker tries to claim the role
	// over and over while the relays elect a new sequencer.
	var pid int32
	if err := db.Pool.QueryRow(context.Background(), "SELECT holder_pid FROM relay.sequencer").Scan(&pid); err != nil || pid == 0 {
		t.Fatalf("sequencer's session: %d, %v", pid, err)
	}
	db.Exec(t, "SELECT pg_terminate_backend($1)", pid)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		denied(t, attacker, `UPDATE relay.sequencer SET holder_pid = pg_backend_pid(), holder_started = now()`)
		time.Sleep(50 * time.Millisecond)
	}
	relaytest.Eventually(t, 10*time.Second, "a relay is the sequencer again", func() bool { return leader() == 1 })
	var holderRole string
	if err := db.Pool.QueryRow(context.Background(), `
SELECT a.usename FROM relay.sequencer s JOIN pg_stat_activity a ON a.pid = s.holder_pid`).Scan(&holderRole); err != nil {
		t.Fatal(err)
	}
	if holderRole != roles.Relay {
		t.Fatalf("the sequencer is a session of %q, want the relay's role %q", holderRole, roles.Relay)
	}
	// Delivery goes on live: the safety poll is an hour.
	insertAs(t, producer, "after the takeover", "zowi-1", "loc-1")
	if got := names(t, client.Collect(t, 1, 5*time.Second)); got[0] != "after the takeover" {
		t.Fatalf("received %q, want the template inserted after the takeover", got)
	}
}

// A notification is a claim by an unauthenticated session: announcements
// are sealed by the sequencer's session, and nothing else on the channel
// can inject a row, move a relay's position or skip an open transaction.
func TestForgedAndReplayedAnnouncementsNeitherInjectRowsNorMovePositions(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	var logs relaytest.Buffer
	r := relaytest.StartLogging(t, roles.RelayURL, slog.New(slog.NewTextHandler(&logs, nil)),
		func(c *relay.Config) { c.SafetyPoll = time.Hour })
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	ws := relaytest.SubscribeWS(t, r.URL, relaytest.Token(t, "zewi-1"), relaytest.SSEOptions{})
	producer := session(t, roles.ProducerURL)
	attacker := session(t, roles.LoginURL)
	if _, err := attacker.Exec(context.Background(), "LISTEN "+eventlog.AnnounceChannel); err != nil {
		t.Fatal(err)
	}

	insertAs(t, producer, "genuine", "zowi-1", "loc-1")
	client.Collect(t, 1, 10*time.Second)
	ws.Collect(t, 1, 10*time.Second)
	captured := listened(t, attacker)

	forge := func(payload string) {
		t.Helper()
		if _, err := attacker.Exec(context.Background(), "SELECT pg_notify($1, $2)", eventlog.AnnounceChannel, payload); err != nil {
			t.Fatal(err)
		}
	}
	// A row that is not in the log, in the announcement format (which is
	// no secret), chained to the relay's position and addressed like the
	// genuine one; the genuine announcement sent again from the attacker's
	// session; and a position far ahead.
	pos := r.Server.Hub().Position()
	fake := eventlog.Event{
		ID: eventlog.ID{Xid: pos.Xid, Seq: pos.Seq + 1000}, Topic: "templates", Audience: []string{"location:loc-1", "org:org-1"},
		Payload: []byte(`{"id":"forged","name":"forged"}`), CreatedAt: time.Now(),
	}
	plain, err := eventlog.EncodeAnnouncements(pos, []eventlog.Event{fake}, fake.ID)
	if err != nil {
		t.Fatal(err)
	}
	far := eventlog.ID{Xid: 1 << 62, Seq: 1 << 62}
	payloads := append(plain, captured, eventlog.EncodePosition(far), far.String(), "s1:"+strings.Repeat("A", 100))
	for _, p := range payloads {
		forge(p)
	}
	client.Quiet(t, 500*time.Millisecond)
	ws.Quiet(t, 10*time.Millisecond)
	if got := r.Server.Hub().Position(); got != pos {
		t.Fatalf("the relay's position moved from %s to %s", pos, got)
	}

	// An open transaction, then a later row: trusting a forged settled
	// position would deliver the later row first and skip the earlier.
	tx, err := producer.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(context.Background(),
		`INSERT INTO templates (name, share_location_ids, created_by) VALUES ('earlier', '{loc-1}', 'zowi-1')`); err != nil {
		t.Fatal(err)
	}
	other := session(t, roles.ProducerURL)
	insertAs(t, other, "later", "zowi-1", "loc-1")
	forge(eventlog.EncodePosition(far))
	client.Quiet(t, 300*time.Millisecond)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Delivered live, as announced by the real sequencer.
	if got := names(t, client.Collect(t, 2, 5*time.Second)); !slices.Equal(got, []string{"earlier", "later"}) {
		t.Fatalf("SSE received %q, want the earlier transaction's row first", got)
	}
	if got := names(t, ws.Collect(t, 2, 5*time.Second)); !slices.Equal(got, []string{"earlier", "later"}) {
		t.Fatalf("WebSocket received %q, want the earlier transaction's row first", got)
	}

	// Visible: a metric, a field in /readyz, a warning.
	want := float64(len(payloads) + 1)
	if n := sample(scrape(t, r.URL), "pgrelay_notifications_forged_total"); n != want {
		t.Errorf("pgrelay_notifications_forged_total = %v, want the %v forged notifications", n, want)
	}
	if n := readyz(t, r.URL)["forged_notifications"]; n != want {
		t.Errorf("/readyz forged_notifications = %v, want %v", n, want)
	}
	if got := strings.Count(logs.String(), "no relay sealed"); got != 1 {
		t.Errorf("logged %d warnings about forged notifications, want 1 (one a minute):\n%s", got, logs.String())
	}
}

// listened returns the payload of one notification the session heard.
func listened(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("wait for an announcement: %v", err)
	}
	return n.Payload
}

func TestAListeningLoginReadsNoRowFromNotifications(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	relaytest.Seed(t, db)
	roles := pgtest.WithRoles(t, db)
	r := relaytest.Start(t, roles.RelayURL)
	client := relaytest.Subscribe(t, r.URL, relaytest.Token(t, "zolo-1"), relaytest.SSEOptions{})
	eavesdropper := session(t, roles.LoginURL)
	for _, ch := range []string{eventlog.AnnounceChannel, sequencer.WakeChannel, filter.ChangeChannel} {
		if _, err := eavesdropper.Exec(context.Background(), "LISTEN "+ch); err != nil {
			t.Fatal(err)
		}
	}
	producer := session(t, roles.ProducerURL)
	const secret = "confidential-menu-of-acme"
	insertAs(t, producer, secret, "zowi-1", "loc-1")
	client.Collect(t, 1, 10*time.Second)

	heard := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		n, err := eavesdropper.WaitForNotification(ctx)
		cancel()
		if err != nil {
			break
		}
		heard++
		for _, leak := range []string{secret, "zowi-1", "loc-1", "org-1"} {
			if strings.Contains(n.Payload, leak) {
				t.Errorf("a notification on %s shows %q: %s", n.Channel, leak, n.Payload)
			}
		}
	}
	if heard == 0 {
		t.Fatal("heard no notification at all; the check above proved nothing")
	}
}
