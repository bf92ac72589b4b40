package auth

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// JWKS is a JSON Web Key Set the relay fetches signing keys from, and the
// one issuer whose tokens those keys may verify.
type JWKS struct {
	Issuer string
	URL    string
}

// Defaults of Keys.
const (
	DefaultRefresh    = 10 * time.Minute
	DefaultMinRefetch = time.Minute
	fetchTimeout      = 10 * time.Second
	// maxJWKSBytes bounds a fetched set: providers publish a few keys, a
	// few kilobytes.
	maxJWKSBytes = 1 << 20
)

// remoteSet holds the keys of one JWKS URL. Sets are never merged: a kid
// is looked up only in the sets of the token's issuer, so one provider's
// key can never verify a token claiming another's issuer, whatever kid
// either publishes.
type remoteSet struct {
	src        JWKS
	client     *http.Client
	log        *slog.Logger
	minRefetch time.Duration

	// keys is the last good set; requests read it without locking.
	keys atomic.Pointer[[]publicKey]

	mu sync.Mutex
	// lastLimited is when a limited refresh last fetched: refetches for
	// unknown kids are counted apart from the scheduled ones, so a key
	// rotated just after a scheduled fetch is still found at once.
	lastLimited time.Time
	inflight    chan struct{} // closed when the fetch under way ends
	failing     bool          // the last fetch failed: an outage was logged
}

// lookup returns the keys of the set that may verify a token with kid and
// alg, and whether the set knows kid at all. A token without kid may be
// verified by any key of the set that takes alg.
func (s *remoteSet) lookup(kid, alg string) (keys []crypto.PublicKey, known bool) {
	p := s.keys.Load()
	if p == nil {
		return nil, false
	}
	for _, k := range *p {
		if kid != "" && k.kid != kid {
			continue
		}
		known = true
		if k.allows(alg) {
			keys = append(keys, k.key)
		}
	}
	return keys, known
}

// refresh fetches the set again. When a fetch is already under way it
// waits for that one instead; when limited, it does nothing if a limited
// refresh fetched less than minRefetch ago, so that tokens with made-up
// kids cannot make the relay hammer a provider. It returns the error of the
// fetch it made, if any.
func (s *remoteSet) refresh(ctx context.Context, limited bool) error {
	s.mu.Lock()
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return nil
	}
	if limited {
		if !s.lastLimited.IsZero() && time.Since(s.lastLimited) < s.minRefetch {
			s.mu.Unlock()
			return nil
		}
		s.lastLimited = time.Now()
	}
	ch := make(chan struct{})
	s.inflight = ch
	s.mu.Unlock()

	err := s.fetch(ctx)

	s.mu.Lock()
	s.inflight = nil
	switch {
	case err != nil && !s.failing && ctx.Err() == nil:
		s.failing = true
		s.log.Warn("JWKS fetch failed; serving its last good keys until it recovers", "url", s.src.URL, "err", err)
	case err == nil && s.failing:
		s.failing = false
		s.log.Info("JWKS fetched again", "url", s.src.URL)
	}
	s.mu.Unlock()
	close(ch)
	return err
}

// fetch reads the set from its URL and, if it holds a usable key, makes it
// the set's keys. On any failure the last good keys stay.
func (s *remoteSet) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.src.URL, nil)
	if err != nil {
		return fmt.Errorf("fetch JWKS %s: %w", s.src.URL, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		// url.Error repeats the URL this message already names.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("fetch JWKS %s: %w", s.src.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch JWKS %s: %s", s.src.URL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("fetch JWKS %s: read body: %w", s.src.URL, err)
	}
	if len(body) > maxJWKSBytes {
		return fmt.Errorf("fetch JWKS %s: larger than %d bytes", s.src.URL, maxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return fmt.Errorf("fetch JWKS %s: %w", s.src.URL, err)
	}
	s.keys.Store(&keys)
	return nil
}

// run refreshes the set every interval until ctx is done. While the
// provider is down it retries every minRefetch (if that is sooner), so
// rotated keys are picked up soon after it recovers.
func (s *remoteSet) run(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := interval
		if err := s.refresh(ctx, false); err != nil {
			next = min(interval, s.minRefetch)
		}
		t.Reset(next)
	}
}
