package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Authenticator identifies the buyer of a request. It is safe for
// concurrent use.
type Authenticator struct {
	mode string
	// jwt mode
	parser *jwt.Parser
	key    any
	alg    string
	claim  string
	// header mode
	userHeader, secretHeader string
	secretSum                [32]byte
}

// Failure is why a request was not authenticated; Reason is a metric label.
type Failure struct {
	Reason string // missing, malformed, signature, expired, claims, user, gateway
	Err    error  // the library's or our detail, for the log only
}

func (f *Failure) Error() string {
	if f.Err == nil {
		return f.Reason
	}
	return f.Reason + ": " + f.Err.Error()
}

func fail(reason string, err error) (int64, error) { return 0, &Failure{Reason: reason, Err: err} }

// Reasons of failures, the values of the metric label.
var Reasons = []string{"missing", "malformed", "signature", "expired", "claims", "user", "gateway"}

// maxToken bounds the bearer token parsed (base64 and JSON work).
const maxToken = 4096

// New builds the authenticator of a validated configuration with a mode.
func New(cfg Config) (*Authenticator, error) {
	switch cfg.Mode {
	case ModeJWT:
		key, alg, err := cfg.JWT.key()
		if err != nil {
			return nil, err
		}
		opts := []jwt.ParserOption{
			jwt.WithValidMethods([]string{alg}), // pinned: no alg confusion, never "none"
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(cfg.JWT.Leeway),
			jwt.WithJSONNumber(), // user ids beyond 2^53 stay exact
			jwt.WithStrictDecoding(),
		}
		if cfg.JWT.Issuer != "" {
			opts = append(opts, jwt.WithIssuer(cfg.JWT.Issuer))
		}
		if cfg.JWT.Audience != "" {
			opts = append(opts, jwt.WithAudience(cfg.JWT.Audience))
		}
		return &Authenticator{mode: ModeJWT, parser: jwt.NewParser(opts...), key: key, alg: alg, claim: cfg.JWT.UserClaim}, nil
	case ModeHeader:
		if err := cfg.Header.validate(); err != nil {
			return nil, err
		}
		return &Authenticator{mode: ModeHeader, userHeader: cfg.Header.UserHeader, secretHeader: cfg.Header.SecretHeader,
			secretSum: sha256.Sum256([]byte(cfg.Header.Secret))}, nil
	}
	return nil, fmt.Errorf("seckill.auth.mode %q: want jwt or header", cfg.Mode)
}

// User returns the verified user id of r, or a *Failure.
func (a *Authenticator) User(r *http.Request) (int64, error) {
	if a.mode == ModeHeader {
		return a.gatewayUser(r)
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return fail("missing", nil)
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return fail("malformed", errors.New("the Authorization header is not a Bearer token"))
	}
	if len(tok) > maxToken {
		return fail("malformed", fmt.Errorf("token of %d bytes, at most %d", len(tok), maxToken))
	}
	claims := jwt.MapClaims{}
	_, err := a.parser.ParseWithClaims(tok, claims, a.keyFor)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return fail("expired", err)
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fail("malformed", err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return fail("signature", err)
	default:
		return fail("claims", err)
	}
	user, err := ParseUser(claims[a.claim])
	if err != nil {
		return fail("user", fmt.Errorf("claim %q: %w", a.claim, err))
	}
	return user, nil
}

// keyFor hands out the key only for the pinned algorithm (the parser has
// checked it already), and refuses critical header extensions it does
// not understand (RFC 7515, 4.1.11).
func (a *Authenticator) keyFor(t *jwt.Token) (any, error) {
	if t.Method.Alg() != a.alg {
		return nil, fmt.Errorf("alg %q, want %q", t.Method.Alg(), a.alg)
	}
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New("crit header not supported")
	}
	return a.key, nil
}

func (a *Authenticator) gatewayUser(r *http.Request) (int64, error) {
	secret := r.Header.Values(a.secretHeader)
	user := r.Header.Values(a.userHeader)
	if len(secret) == 0 && len(user) == 0 {
		return fail("missing", nil)
	}
	// Hashes compare in constant time whatever the length sent.
	if len(secret) != 1 {
		return fail("gateway", fmt.Errorf("%d %s headers, want 1", len(secret), a.secretHeader))
	}
	sum := sha256.Sum256([]byte(secret[0]))
	if subtle.ConstantTimeCompare(sum[:], a.secretSum[:]) != 1 {
		return fail("gateway", fmt.Errorf("wrong %s", a.secretHeader))
	}
	if len(user) != 1 {
		return fail("user", fmt.Errorf("%d %s headers, want 1", len(user), a.userHeader))
	}
	id, err := ParseUser(user[0])
	if err != nil {
		return fail("user", fmt.Errorf("%s: %w", a.userHeader, err))
	}
	return id, nil
}

// Challenge is the WWW-Authenticate value of a 401 for err (RFC 6750).
func (a *Authenticator) Challenge(err error) string {
	if a.mode == ModeHeader {
		return `Gateway realm="cachesync"`
	}
	var f *Failure
	if errors.As(err, &f) && f.Reason != "missing" {
		return `Bearer realm="cachesync", error="invalid_token"`
	}
	return `Bearer realm="cachesync"`
}

// ParseUser reads a user id: a positive decimal integer that fits int64,
// without sign, leading zeros, fraction or exponent, as a string or a
// JSON number.
func ParseUser(v any) (int64, error) {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case json.Number:
		s = x.String()
	case nil:
		return 0, errors.New("missing")
	default:
		return 0, fmt.Errorf("a %T, want a string or an integer", v)
	}
	if s == "" || len(s) > 19 || s[0] == '0' {
		return 0, errors.New("want a positive integer")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("want a positive integer")
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("want a positive integer that fits 64 bits")
	}
	return n, nil
}

// Mint signs an HS256 token for user valid for ttl from now, with the
// configuration's user claim, issuer and audience: for `cachesync token`,
// tests and benchmarks. Tokens of a key pair come from the identity
// provider that holds the private key.
func Mint(cfg JWT, user int64, ttl time.Duration, now time.Time) (string, error) {
	if cfg.HS256Secret == "" {
		return "", errors.New("minting needs seckill.auth.jwt.hs256_secret (CACHESYNC_JWT_SECRET); with public_key, tokens come from the identity provider holding the private key")
	}
	if user <= 0 {
		return "", fmt.Errorf("user %d: want a positive integer", user)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("ttl %s: want a positive duration", ttl)
	}
	claim := cfg.UserClaim
	if claim == "" {
		claim = "sub"
	}
	claims := jwt.MapClaims{
		claim: strconv.FormatInt(user, 10),
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	if cfg.Issuer != "" {
		claims["iss"] = cfg.Issuer
	}
	if cfg.Audience != "" {
		claims["aud"] = cfg.Audience
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(cfg.HS256Secret))
}
