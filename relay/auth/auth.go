// Package auth identifies subscribers: the `sub` claim of an HS256 JWT signed
// with the relay's secret, from the Authorization header or the access_token
// query parameter (EventSource cannot set headers). Every token must carry
// exp: its expiry is also when the streams opened with it end.
package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
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

// Verifier checks tokens.
type Verifier struct {
	secret      []byte
	issuer      string
	audience    string
	insecureDev bool
	now         func() time.Time
}

// Options configure a Verifier beyond its secret.
type Options struct {
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer, Audience string
	// InsecureDev also accepts ?user=ID without any token. Development only.
	InsecureDev bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// NewVerifier returns a Verifier for tokens signed with secret.
func NewVerifier(secret []byte, opts Options) *Verifier {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Verifier{secret: secret, issuer: opts.Issuer, audience: opts.Audience, insecureDev: opts.InsecureDev, now: now}
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
				if err := checkSubject(user); err != nil {
					return Identity{}, err
				}
				return Identity{Subject: user}, nil
			}
		}
		return Identity{}, ErrNoToken
	}
	return v.VerifyIdentity(token)
}

// Verify checks a token and returns its subject.
func (v *Verifier) Verify(token string) (string, error) {
	id, err := v.VerifyIdentity(token)
	return id.Subject, err
}

// VerifyIdentity checks a token and returns its subject and expiry.
func (v *Verifier) VerifyIdentity(token string) (Identity, error) {
	if len(v.secret) == 0 {
		return Identity{}, fmt.Errorf("%w: this relay has no signing secret configured", ErrBadToken)
	}
	if len(token) > maxTokenLen {
		return Identity{}, fmt.Errorf("%w: token longer than %d bytes", ErrBadToken, maxTokenLen)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithTimeFunc(v.now),
		jwt.WithLeeway(5 * time.Second),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	if v.audience != "" {
		opts = append(opts, jwt.WithAudience(v.audience))
	}
	claims := &jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return v.secret, nil }, opts...)
	if err != nil {
		if alg := algorithm(token); alg != "" && alg != jwt.SigningMethodHS256.Alg() {
			return Identity{}, fmt.Errorf("%w: unsupported signing algorithm %q (want HS256)", ErrBadToken, truncate(alg))
		}
		return Identity{}, fmt.Errorf("%w: %s", ErrBadToken, describe(err))
	}
	// A token without exp would authenticate forever, and a stream opened
	// with it would never end.
	if claims.ExpiresAt == nil {
		return Identity{}, fmt.Errorf("%w: no exp claim: tokens must expire", ErrBadToken)
	}
	// The leeway above is for clocks that disagree on nbf; a stream ends at
	// exp itself (see stream.Request.Expires), so a token must not open one
	// after it either, or the stream would end as soon as it began.
	if !v.now().Before(claims.ExpiresAt.Time) {
		return Identity{}, fmt.Errorf("%w: token has expired", ErrBadToken)
	}
	if claims.Subject == "" {
		return Identity{}, fmt.Errorf("%w: no sub claim", ErrBadToken)
	}
	if err := checkSubject(claims.Subject); err != nil {
		return Identity{}, err
	}
	return Identity{Subject: claims.Subject, Expires: claims.ExpiresAt.Time}, nil
}

// checkSubject refuses subscriber ids that no database row can hold: a
// signed token is still client input, and an id PostgreSQL rejects (a NUL
// byte, invalid UTF-8) would fail every query it is part of, not only its
// own.
func checkSubject(sub string) error {
	switch {
	case len(sub) > MaxSubjectLen:
		return fmt.Errorf("%w: sub longer than %d bytes", ErrBadToken, MaxSubjectLen)
	case !utf8.ValidString(sub):
		return fmt.Errorf("%w: sub is not valid UTF-8", ErrBadToken)
	case strings.ContainsRune(sub, 0):
		return fmt.Errorf("%w: sub contains a NUL character", ErrBadToken)
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
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unsupported signing algorithm (want HS256)"
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
	if err := checkSubject(sub); err != nil {
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
