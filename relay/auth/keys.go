package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// publicKey is one key that may verify subscriber tokens, with the
// algorithms its type allows. Each algorithm is bound to one key type, so a
// token can never have a key used with an algorithm it was not made for:
// an HMAC over a public key's bytes, or ES256 with a P-384 key.
type publicKey struct {
	kid  string
	key  crypto.PublicKey
	algs []string
}

// allows reports whether k may verify a token signed with alg.
func (k publicKey) allows(alg string) bool { return slices.Contains(k.algs, alg) }

// asymmetricAlgs are the algorithms public keys verify.
var asymmetricAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// algsFor returns the algorithms a key of raw's type and size may verify.
func algsFor(raw any) ([]string, error) {
	switch k := raw.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		}
		return nil, fmt.Errorf("unsupported elliptic curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		// Whoever published a private key has given it to everyone.
		return nil, errors.New("a private key: only public keys are accepted")
	case []byte:
		// A JWKS is public: a shared secret in one is no secret.
		return nil, errors.New("a symmetric key: HMAC tokens are verified only with --jwt-secret")
	}
	return nil, fmt.Errorf("unsupported key type %T", raw)
}

// fromJWK returns the verification key k holds, or why it cannot be one.
func fromJWK(k jwk.Key) (publicKey, error) {
	kid, _ := k.KeyID()
	if use, ok := k.KeyUsage(); ok && use != "sig" {
		return publicKey{}, fmt.Errorf("key %q is for %q, not signatures", kid, use)
	}
	if ops, ok := k.KeyOps(); ok && !slices.Contains(ops, jwk.KeyOpVerify) {
		return publicKey{}, fmt.Errorf("key %q may not verify (key_ops %v)", kid, ops)
	}
	var raw any
	if err := jwk.Export(k, &raw); err != nil {
		return publicKey{}, fmt.Errorf("key %q: %w", kid, err)
	}
	algs, err := algsFor(raw)
	if err != nil {
		return publicKey{}, fmt.Errorf("key %q: %w", kid, err)
	}
	// A key that names its algorithm is good for that one only.
	if alg, ok := k.Algorithm(); ok {
		if !slices.Contains(algs, alg.String()) {
			return publicKey{}, fmt.Errorf("key %q: algorithm %q does not fit a key of this type", kid, alg)
		}
		algs = []string{alg.String()}
	}
	return publicKey{kid: kid, key: raw, algs: algs}, nil
}

// parseJWKS returns the verification keys of a JWK set. Keys the relay
// cannot use (encryption keys, unknown types) are skipped, so a provider
// may publish them alongside its signing keys; a set with no usable key at
// all is an error.
func parseJWKS(body []byte) ([]publicKey, error) {
	// Entries this library cannot parse are dropped rather than failing the
	// set: providers add key types over time.
	set, err := jwk.Parse(body, jwk.WithIgnoreParseError(true))
	if err != nil {
		return nil, fmt.Errorf("parse JWK set: %w", err)
	}
	var keys []publicKey
	var skipped []error
	for i := range set.Len() {
		k, _ := set.Key(i)
		pk, err := fromJWK(k)
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		keys = append(keys, pk)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no usable signing key in the JWK set: %w", errors.Join(append(skipped, errors.New("(empty)"))...))
	}
	return keys, nil
}

// loadPEM reads PEM-encoded public keys (PUBLIC KEY blocks or
// certificates; several may follow each other) from path. They carry no
// kid: a token's kid is not used to choose among them.
func loadPEM(path string) ([]publicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key file: %w", err)
	}
	set, err := jwk.Parse(data, jwk.WithPEM(true))
	if err != nil {
		return nil, fmt.Errorf("public key file %s: %w", path, err)
	}
	if set.Len() == 0 {
		return nil, fmt.Errorf("public key file %s: no PEM block", path)
	}
	var keys []publicKey
	for i := range set.Len() {
		k, _ := set.Key(i)
		pk, err := fromJWK(k)
		if err != nil {
			return nil, fmt.Errorf("public key file %s, block %d: %w", path, i+1, err)
		}
		keys = append(keys, pk)
	}
	return keys, nil
}
