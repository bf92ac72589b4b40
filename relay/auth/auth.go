// Package auth identifies subscribers: the `sub` claim (or another
// configured one) of a JWT signed with the relay's HS256 secret, with a
// static public key, or with a key of an identity provider's JWKS, from the
// Authorization header or the access_token query parameter (EventSource
// cannot set headers). Every token must carry exp: its expiry is also when
// the streams opened with it end.
package auth

import (
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// Errors a caller maps to HTTP 401.
var (
	ErrNoToken  = errors.New("missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>")
	ErrBadToken = errors.New("invalid token")
)

// maxTokenLen bounds what is parsed: a pgrelay token is a few hundred bytes.
const maxTokenLen = 8 << 10

// MaxSubjectLen bounds a subscriber id. Ids are looked up in the database
// and kept in memory per connection: nothing legitimate comes near it.
const MaxSubjectLen = 256

// Identity is who a request is authenticated as, and until when.
type Identity struct {
	Subject string
	// Expires is when the token stops being valid: a stream opened with it
	// ends then. Zero for a subject taken from ?user= in insecure dev mode,
	// which has no token to expire.
	Expires time.Time
}

// Verifier checks tokens against the relay's key sources: an HS256 secret,
// static public keys, and JWKS URLs each bound to one issuer.
type Verifier struct {
	secret       []byte
	static       []publicKey
	remote       []*remoteSet
	refresh      time.Duration
	algs         []string // the signing algorithms some key source takes
	issuer       string
	audience     string
	subjectClaim string
	insecureDev  bool
	now          func() time.Time
}

// Options configure a Verifier beyond its keys.
type Options struct {
	// Issuer and Audience, when set, must match the token's iss and aud,
	// whichever key signed it.
	Issuer, Audience string
	// SubjectClaim is the claim that holds the subscriber id (default
	// "sub"), for providers that keep their user id elsewhere.
	SubjectClaim string
	// InsecureDev also accepts ?user=ID without any token. Development only.
	InsecureDev bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Keys are where a Verifier finds the keys that sign subscriber tokens.
type Keys struct {
	// Secret verifies HS256 tokens.
	Secret []byte
	// JWKS are fetched at start and refreshed by Run. An asymmetric token
	// claiming the issuer of one of them is verified by its keys only.
	JWKS []JWKS
	// PublicKeyFiles hold PEM public keys. They verify tokens of any issuer
	// that has no JWKS (Options.Issuer still applies); the secret verifies
	// HS256 tokens of any issuer.
	PublicKeyFiles []string
	// Refresh is how often each JWKS is fetched again (default
	// DefaultRefresh).
	Refresh time.Duration
	// MinRefetch is how soon after a fetch a token with an unknown kid may
	// cause another (default DefaultMinRefetch).
	MinRefetch time.Duration
	// Client fetches the JWKS (default: a client with a 10 s timeout).
	Client *http.Client
	// Log receives JWKS outages and recoveries (default: discarded).
	Log *slog.Logger
}

// NewVerifier returns a Verifier for HS256 tokens signed with secret.
func NewVerifier(secret []byte, opts Options) *Verifier {
	v := newVerifier(opts)
	v.secret = secret
	v.algs = v.acceptedAlgs()
	return v
}

// Open returns a Verifier for keys. It reads the public key files and
// fetches every JWKS once, failing if any cannot be had: a relay that
// started without a provider's keys would refuse all of its tokens. Run
// keeps the JWKS fresh.
func Open(ctx context.Context, keys Keys, opts Options) (*Verifier, error) {
	v := newVerifier(opts)
	v.secret = keys.Secret
	v.refresh = cmp.Or(keys.Refresh, DefaultRefresh)
	for _, path := range keys.PublicKeyFiles {
		pks, err := loadPEM(path)
		if err != nil {
			return nil, fmt.Errorf("--jwt-public-key-file: %w", err)
		}
		v.static = append(v.static, pks...)
	}
	client := keys.Client
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout}
	}
	log := keys.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, src := range keys.JWKS {
		if src.Issuer == "" {
			return nil, fmt.Errorf("JWKS %s: no issuer: its keys would verify tokens claiming any issuer", src.URL)
		}
		if opts.Issuer != "" && src.Issuer != opts.Issuer {
			return nil, fmt.Errorf("JWKS %s is for issuer %q, but only tokens of %q are accepted", src.URL, src.Issuer, opts.Issuer)
		}
		set := &remoteSet{src: src, client: client, log: log, minRefetch: cmp.Or(keys.MinRefetch, DefaultMinRefetch)}
		if err := set.refresh(ctx, false); err != nil {
			return nil, fmt.Errorf("load signing keys: %w", err)
		}
		v.remote = append(v.remote, set)
	}
	v.algs = v.acceptedAlgs()
	return v, nil
}

func newVerifier(opts Options) *Verifier {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Verifier{
		issuer: opts.Issuer, audience: opts.Audience, subjectClaim: cmp.Or(opts.SubjectClaim, "sub"),
		insecureDev: opts.InsecureDev, now: now,
	}
}

func (v *Verifier) acceptedAlgs() []string {
	var algs []string
	if len(v.secret) > 0 {
		algs = append(algs, jwt.SigningMethodHS256.Alg())
	}
	if len(v.static) > 0 || len(v.remote) > 0 {
		algs = append(algs, asymmetricAlgs...)
	}
	return algs
}

// Run refreshes the JWKS every Keys.Refresh until ctx is done, keeping the
// last good keys of a provider that cannot be reached.
func (v *Verifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, set := range v.remote {
		wg.Go(func() { set.run(ctx, v.refresh) })
	}
	wg.Wait()
	return nil
}

// Subject returns the subscriber id a request is authenticated as.
func (v *Verifier) Subject(r *http.Request) (string, error) {
	id, err := v.Authenticate(r)
	return id.Subject, err
}

// Authenticate returns the identity a request is authenticated as.
func (v *Verifier) Authenticate(r *http.Request) (Identity, error) {
	token := ""
	// Credentials must be unambiguous: a proxy that checked one copy and a
	// relay that used another would disagree on who the client is.
	if len(r.Header.Values("Authorization")) > 1 {
		return Identity{}, fmt.Errorf("%w: more than one Authorization header", ErrBadToken)
	}
	if q := r.URL.Query()["access_token"]; len(q) > 1 {
		return Identity{}, fmt.Errorf("%w: more than one access_token parameter", ErrBadToken)
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
			return Identity{}, fmt.Errorf("%w: Authorization header must be \"Bearer <jwt>\"", ErrBadToken)
		}
		token = strings.TrimSpace(rest)
		if q := r.URL.Query().Get("access_token"); q != "" && q != token {
			return Identity{}, fmt.Errorf("%w: different tokens in the Authorization header and the access_token parameter", ErrBadToken)
		}
	} else {
		token = r.URL.Query().Get("access_token")
	}
	if token == "" {
		if v.insecureDev {
			if user := r.URL.Query().Get("user"); user != "" {
				if err := checkSubject("sub", user); err != nil {
					return Identity{}, err
				}
				return Identity{Subject: user}, nil
			}
		}
		return Identity{}, ErrNoToken
	}
	return v.verify(r.Context(), token)
}

// Verify checks a token and returns its subject.
func (v *Verifier) Verify(token string) (string, error) {
	id, err := v.VerifyIdentity(token)
	return id.Subject, err
}

// VerifyIdentity checks a token and returns its subject and expiry.
func (v *Verifier) VerifyIdentity(token string) (Identity, error) {
	return v.verify(context.Background(), token)
}

// verify checks a token; ctx bounds the wait for a JWKS refetch that a
// token with an unknown kid may cause.
func (v *Verifier) verify(ctx context.Context, token string) (Identity, error) {
	if len(v.algs) == 0 {
		return Identity{}, fmt.Errorf("%w: this relay has no signing keys configured", ErrBadToken)
	}
	if len(token) > maxTokenLen {
		return Identity{}, fmt.Errorf("%w: token longer than %d bytes", ErrBadToken, maxTokenLen)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.algs),
		jwt.WithTimeFunc(v.now),
		jwt.WithLeeway(5 * time.Second),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	if v.audience != "" {
		opts = append(opts, jwt.WithAudience(v.audience))
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) { return v.key(ctx, t) }, opts...)
	if err != nil {
		if alg := algorithm(token); alg != "" && !slices.Contains(v.algs, alg) {
			return Identity{}, fmt.Errorf("%w: unsupported signing algorithm %q (this relay accepts %s)", ErrBadToken, truncate(alg), strings.Join(v.algs, ", "))
		}
		return Identity{}, fmt.Errorf("%w: %s", ErrBadToken, describe(err))
	}
	exp, err := claims.GetExpirationTime()
	// A token without exp would authenticate forever, and a stream opened
	// with it would never end.
	if err != nil || exp == nil {
		return Identity{}, fmt.Errorf("%w: no exp claim: tokens must expire", ErrBadToken)
	}
	// The leeway above is for clocks that disagree on nbf; a stream ends at
	// exp itself (see stream.Request.Expires), so a token must not open one
	// after it either, or the stream would end as soon as it began.
	if !v.now().Before(exp.Time) {
		return Identity{}, fmt.Errorf("%w: token has expired", ErrBadToken)
	}
	sub, err := v.subject(claims)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Subject: sub, Expires: exp.Time}, nil
}

// subject returns the subscriber id a verified token's claims carry.
func (v *Verifier) subject(claims jwt.MapClaims) (string, error) {
	raw, ok := claims[v.subjectClaim]
	if !ok {
		return "", fmt.Errorf("%w: no %s claim", ErrBadToken, v.subjectClaim)
	}
	sub, ok := raw.(string)
	if !ok {
		return "", fmt.Errorf("%w: %s claim is not a string", ErrBadToken, v.subjectClaim)
	}
	if sub == "" {
		return "", fmt.Errorf("%w: no %s claim", ErrBadToken, v.subjectClaim)
	}
	if err := checkSubject(v.subjectClaim, sub); err != nil {
		return "", err
	}
	return sub, nil
}

// keyError says why no key may verify a token; its text reaches the client.
type keyError struct{ msg string }

func (e *keyError) Error() string { return e.msg }

func noKey(format string, args ...any) error { return &keyError{fmt.Sprintf(format, args...)} }

// key returns the keys that may verify t: the secret for HS256; for other
// algorithms the keys of the token's issuer's JWKS with its kid, or, for
// an issuer without a JWKS, the static public keys. Keys are chosen by
// issuer first so that no key answers for an issuer it was not configured
// for, and only keys whose type fits alg are offered.
func (v *Verifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	iss, err := t.Claims.GetIssuer()
	if err != nil {
		return nil, noKey("iss claim is not a string")
	}
	// The secret is the relay's own: whoever holds it may sign for any
	// subscriber, whatever issuer the token names (a provider moving from a
	// shared secret to a JWKS signs with both for a while). It is never
	// tried for other algorithms, nor a public key for HS256.
	if alg == jwt.SigningMethodHS256.Alg() {
		return v.secret, nil
	}
	sets := v.setsFor(iss)
	if len(sets) == 0 {
		keys := v.staticKeys(alg)
		if len(keys) == 0 {
			return nil, noKey("no public key for %s tokens of issuer %q", alg, truncate(iss))
		}
		return verificationKeys(keys), nil
	}
	kid, _ := t.Header["kid"].(string)
	keys, known := lookup(sets, kid, alg)
	if !known && kid != "" {
		// A provider that rotated its keys publishes the new one before
		// signing with it: fetch again (at most once a minute per set).
		for _, set := range sets {
			_ = set.refresh(context.WithoutCancel(ctx), true)
		}
		keys, known = lookup(sets, kid, alg)
	}
	switch {
	case !known:
		return nil, noKey("no key with kid %q in the JWKS of issuer %q", truncate(kid), truncate(iss))
	case len(keys) == 0:
		return nil, noKey("key %q of issuer %q does not take %s", truncate(kid), truncate(iss), alg)
	}
	return verificationKeys(keys), nil
}

// setsFor returns the JWKS of issuer iss.
func (v *Verifier) setsFor(iss string) []*remoteSet {
	var sets []*remoteSet
	for _, s := range v.remote {
		if s.src.Issuer == iss {
			sets = append(sets, s)
		}
	}
	return sets
}

func (v *Verifier) staticKeys(alg string) []crypto.PublicKey {
	var keys []crypto.PublicKey
	for _, k := range v.static {
		if k.allows(alg) {
			keys = append(keys, k.key)
		}
	}
	return keys
}

func lookup(sets []*remoteSet, kid, alg string) (keys []crypto.PublicKey, known bool) {
	for _, s := range sets {
		k, ok := s.lookup(kid, alg)
		keys, known = append(keys, k...), known || ok
	}
	return keys, known
}

func verificationKeys(keys []crypto.PublicKey) jwt.VerificationKeySet {
	set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(keys))}
	for i, k := range keys {
		set.Keys[i] = k
	}
	return set
}

// checkSubject refuses subscriber ids that no database row can hold: a
// signed token is still client input, and an id PostgreSQL rejects (a NUL
// byte, invalid UTF-8) would fail every query it is part of, not only its
// own.
func checkSubject(claim, sub string) error {
	switch {
	case len(sub) > MaxSubjectLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrBadToken, claim, MaxSubjectLen)
	case !utf8.ValidString(sub):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrBadToken, claim)
	case strings.ContainsRune(sub, 0):
		return fmt.Errorf("%w: %s contains a NUL character", ErrBadToken, claim)
	}
	return nil
}

// algorithm returns the alg a token's header claims, without verifying it.
func algorithm(token string) string {
	t, _, err := jwt.NewParser().ParseUnverified(token, &jwt.RegisteredClaims{})
	if err != nil || t == nil {
		return ""
	}
	alg, _ := t.Header["alg"].(string)
	return alg
}

func truncate(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// describe names what is wrong with a token without echoing it.
func describe(err error) string {
	var ke *keyError
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.As(err, &ke):
		return ke.msg
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unsupported signing algorithm"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "a required claim (iss or aud) is missing"
	default:
		return "token rejected"
	}
}

// Issue returns an HS256 token for subscriber sub, valid for ttl from now.
func Issue(secret []byte, sub string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("issue token: no signing secret configured")
	}
	if sub == "" {
		return "", errors.New("issue token: empty subject")
	}
	if err := checkSubject("sub", sub); err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	claims := jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	return token, nil
}
