package relay

import "time"

// WithForeignListAge makes a test relay trust its list of other databases'
// transactions for d: with a long d its own view of which events are
// settled lags the sequencer's, as it may for up to a fraction of a second
// on a server shared with busy databases.
func WithForeignListAge(d time.Duration) func(*Config) {
	return func(c *Config) { c.foreignListAge = d }
}

// WithJWKSTiming makes a test relay fetch its JWKS every refresh, and again
// for a token with an unknown kid at most every minRefetch, below the
// bounds Validate sets.
func WithJWKSTiming(refresh, minRefetch time.Duration) func(*Config) {
	return func(c *Config) { c.jwksRefresh, c.jwksMinRefetch = refresh, minRefetch }
}
