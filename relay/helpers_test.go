package relay_test

import (
	"time"

	"github.com/pgrelay/pgrelay/relay/auth"
)

func relayAuthIssue(secret, sub string, ttl time.Duration) (string, error) {
	return auth.Issue([]byte(secret), sub, ttl, time.Now())
}
