// Package authtest runs identity providers for tests: an HTTP server that
// publishes a JWK set, with keys that sign tokens, can be rotated, and can
// be taken down.
package authtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Key is a signing key of a test provider.
type Key struct {
	// ID is the key's kid.
	ID string
	// Alg is the algorithm it signs with (RS256, PS256, ES256, EdDSA, …).
	Alg     string
	private crypto.Signer
}

// NewKey generates a key for alg with kid id.
func NewKey(t testing.TB, alg, id string) *Key {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("authtest: no key type for algorithm %q", alg)
	}
	if err != nil {
		t.Fatalf("generate %s key: %v", alg, err)
	}
	return &Key{ID: id, Alg: alg, private: k}
}

// Public returns the key's public half.
func (k *Key) Public() crypto.PublicKey { return k.private.Public() }

// PublicPEM returns the public key as a PEM PUBLIC KEY block.
func (k *Key) PublicPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatalf("marshal public key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Sign returns a token with claims, signed with the key under its own
// algorithm and kid.
func (k *Key) Sign(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	return k.SignAs(t, k.Alg, k.ID, claims)
}

// SignAs returns a token signed with the key but whose header claims alg
// and kid: for tokens no honest issuer would make.
func (k *Key) SignAs(t testing.TB, alg, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(k.private)
	if err != nil {
		t.Fatalf("sign %s token with a %T: %v", alg, k.private, err)
	}
	return s
}

// JWK returns the key's public half as a JWK, with kid, alg and use.
func (k *Key) JWK(t testing.TB) json.RawMessage {
	t.Helper()
	return k.jwk(t, k.Public())
}

// PrivateJWK returns the whole key, private half included, as a JWK: what
// a provider must never publish.
func (k *Key) PrivateJWK(t testing.TB) json.RawMessage {
	t.Helper()
	return k.jwk(t, k.private)
}

func (k *Key) jwk(t testing.TB, raw any) json.RawMessage {
	t.Helper()
	j, err := jwk.Import(raw)
	if err != nil {
		t.Fatalf("import %s key: %v", k.Alg, err)
	}
	for name, v := range map[string]any{jwk.KeyIDKey: k.ID, jwk.AlgorithmKey: k.Alg, jwk.KeyUsageKey: "sig"} {
		if err := j.Set(name, v); err != nil {
			t.Fatalf("set %s of JWK: %v", name, err)
		}
	}
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatalf("marshal JWK: %v", err)
	}
	return b
}

// Provider is an identity provider's JWKS endpoint.
type Provider struct {
	// URL is where the JWK set is served.
	URL string

	srv      *httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	body     []byte
	down     bool
}

// NewProvider serves a JWK set of keys until the test ends.
func NewProvider(t testing.TB, keys ...*Key) *Provider {
	t.Helper()
	p := &Provider{}
	p.Publish(t, keys...)
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	p.URL = p.srv.URL + "/.well-known/jwks.json"
	return p
}

func (p *Provider) serve(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	p.mu.Lock()
	body, down := p.body, p.down
	p.mu.Unlock()
	if down || r.URL.Path != "/.well-known/jwks.json" {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	_, _ = w.Write(body)
}

// Publish replaces the published set with keys.
func (p *Provider) Publish(t testing.TB, keys ...*Key) {
	t.Helper()
	entries := make([]json.RawMessage, len(keys))
	for i, k := range keys {
		entries[i] = k.JWK(t)
	}
	p.PublishJWKs(t, entries...)
}

// PublishJWKs replaces the published set with the given JWK objects, as
// written: for sets no honest provider would publish.
func (p *Provider) PublishJWKs(t testing.TB, entries ...json.RawMessage) {
	t.Helper()
	if entries == nil {
		entries = []json.RawMessage{}
	}
	body, err := json.Marshal(map[string]any{"keys": entries})
	if err != nil {
		t.Fatalf("marshal JWK set: %v", err)
	}
	p.mu.Lock()
	p.body = body
	p.mu.Unlock()
}

// SetDown makes the endpoint answer 503 (down) or the set again (up).
func (p *Provider) SetDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
}

// Requests returns how many requests the endpoint has received.
func (p *Provider) Requests() int64 { return p.requests.Load() }
