package triggers_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrelay/pgrelay/internal/pgtest"
)

// wakeUps counts the notifications on pgrelay_wake that arrive until none
// has come for quiet.
func wakeUps(t *testing.T, listener *pgx.Conn, quiet time.Duration) int {
	t.Helper()
	n := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), quiet)
		_, err := listener.WaitForNotification(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return n
		}
		if err != nil {
			t.Fatalf("wait for wake-ups: %v", err)
		}
		n++
	}
}

func TestABurstWhileTheSequencerSleepsSendsFourWakeUpsNotOnePerInsert(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	roles := pgtest.WithRoles(t, db)
	db.Exec(t, `INSERT INTO orgs VALUES ('o', 'O'); INSERT INTO locations VALUES ('l', 'o', 'L');
	            INSERT INTO users (id, name, user_type, org_id) VALUES ('u', 'U', 'ZEWI', 'o')`)
	listener, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(context.Background(), "LISTEN pgrelay_wake"); err != nil {
		t.Fatal(err)
	}
	// What a sequencer does when it goes idle, with none running to wake:
	// every insert of the burst finds it asleep.
	db.Exec(t, "UPDATE relay.sequencer SET idle = true")
	for round := range 2 {
		db.Exec(t, "SELECT setval('relay.wake_tickets', 1, false)")
		const producers, each = 8, 25
		var wg sync.WaitGroup
		errs := make(chan error, producers)
		for range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(context.Background(), roles.ProducerURL)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(context.Background())
				for range each {
					if _, err := conn.Exec(context.Background(),
						"INSERT INTO templates (name, share_location_ids, created_by) VALUES ('t', '{l}', 'u')"); err != nil {
						errs <- fmt.Errorf("a producer's insert: %w", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got := wakeUps(t, listener, 500*time.Millisecond); got != 4 {
			t.Errorf("round %d: %d inserts while the sequencer sleeps sent %d wake-ups, want 4", round, producers*each, got)
		}
	}
}
