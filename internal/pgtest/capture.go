package pgtest

import (
	"context"
	"testing"
	"time"
)

// CaptureModes are the capture modes (relay.set_capture) that tests of what
// users rely on run in: the guarantees are the same in both.
var CaptureModes = []string{"trigger", "wal"}

// RequestCapture calls relay.set_capture(mode) on db and fails the test on
// error. A switch is in force once a relay's sequencer has completed it
// (SetCapture waits for that): to wal once it has created the replication
// slot, back to trigger once every transaction open at the call has ended. A database in mode wal holds a slot; it
// goes with the database (DROP DATABASE drops a database's slots once no
// session streams them).
func RequestCapture(t testing.TB, db *DB, mode string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := db.Pool.Exec(ctx, "SELECT relay.set_capture($1)", mode); err != nil {
		t.Fatalf("set capture mode %s: %v", mode, err)
	}
}

// SetCapture requests mode and waits until it is in force (for wal, a
// sequencer must be running on db).
func SetCapture(t testing.TB, db *DB, mode string) {
	t.Helper()
	RequestCapture(t, db, mode)
	WaitCapture(t, db, mode)
}

// WaitCapture waits up to 30 s until mode is the capture mode in force.
func WaitCapture(t testing.TB, db *DB, mode string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var inForce string
	for time.Now().Before(deadline) {
		if err := db.Pool.QueryRow(context.Background(), "SELECT mode FROM relay.capture").Scan(&inForce); err != nil {
			t.Fatalf("read the capture mode: %v", err)
		}
		if inForce == mode {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("capture mode %s was requested 30 s ago and %s is still in force (is a relay's sequencer running?)", mode, inForce)
}

// InEachCaptureMode runs f as one subtest per capture mode, named after it.
func InEachCaptureMode(t *testing.T, f func(t *testing.T, mode string)) {
	t.Helper()
	for _, mode := range CaptureModes {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}

// NewInMode returns a fresh migrated database (New) with mode requested:
// the test starts its relays, then WaitCapture.
func NewInMode(t testing.TB, mode string) *DB {
	t.Helper()
	db := New(t)
	if mode != "trigger" {
		RequestCapture(t, db, mode)
	}
	return db
}
