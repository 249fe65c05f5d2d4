// Package auth identifies the buyer of a flash-sale request from a verified
// source: a signed JWT (HMAC secret or public key) or a trusted gateway's
// header guarded by a shared secret. The request body never names the
// buyer. There is no unauthenticated mode.
package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"
)

// Config chooses how buyers are identified (`seckill.auth`).
type Config struct {
	// Mode is "jwt" (a bearer token the daemon verifies) or "header" (a
	// gateway in front of the daemon verified the buyer and says who it
	// is). Required wherever the sale's api role runs.
	Mode   string `yaml:"mode"`
	JWT    JWT    `yaml:"jwt"`
	Header Header `yaml:"header"`
}

// JWT verifies `Authorization: Bearer <token>`: the signature with exactly
// one key and one algorithm, exp (required), nbf and iat, and the optional
// issuer and audience.
type JWT struct {
	// HS256Secret is the HMAC-SHA256 key shared with whoever issues the
	// tokens: at least MinSecret bytes. Better set by CACHESYNC_JWT_SECRET
	// than in the file.
	HS256Secret string `yaml:"hs256_secret"`
	// PublicKey is a PEM file with an RSA (2048 bits or more), ECDSA or
	// Ed25519 public key ("PUBLIC KEY" or "RSA PUBLIC KEY"), for tokens
	// signed by an identity provider. Exactly one of HS256Secret and
	// PublicKey.
	PublicKey string `yaml:"public_key"`
	// Algorithm is the only alg accepted. Default: HS256 with a secret;
	// RS256 with an RSA key (RS384, RS512, PS256, PS384, PS512 allowed);
	// ES256, ES384 or ES512 by the ECDSA key's curve; EdDSA for Ed25519.
	Algorithm string `yaml:"algorithm"`
	// Issuer and Audience, when set, must be the token's iss and one of
	// its aud.
	Issuer   string `yaml:"issuer"`
	Audience string `yaml:"audience"`
	// UserClaim names the claim holding the user id: a positive integer,
	// as a JSON string ("42") or number. Default "sub".
	UserClaim string `yaml:"user_claim"`
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 30s,
	// at most 5m.
	Leeway time.Duration `yaml:"leeway"`
}

// Header takes the user from a header a trusted gateway sets after
// verifying the buyer itself; the gateway proves itself with a shared
// secret in another header, so a client reaching the daemon directly
// cannot claim to be anyone.
type Header struct {
	// UserHeader carries the user id (default X-User-Id).
	UserHeader string `yaml:"user_header"`
	// SecretHeader carries the gateway's secret (default X-Gateway-Secret).
	SecretHeader string `yaml:"secret_header"`
	// Secret is at least MinSecret bytes. Better set by
	// CACHESYNC_GATEWAY_SECRET than in the file.
	Secret string `yaml:"secret"`
}

// Modes.
const (
	ModeJWT    = "jwt"
	ModeHeader = "header"
)

// MinSecret is the shortest HMAC or gateway secret accepted, in bytes.
const MinSecret = 32

const maxLeeway = 5 * time.Minute

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.JWT.UserClaim == "" {
		c.JWT.UserClaim = "sub"
	}
	if c.JWT.Leeway == 0 {
		c.JWT.Leeway = 30 * time.Second
	}
	if c.Header.UserHeader == "" {
		c.Header.UserHeader = "X-User-Id"
	}
	if c.Header.SecretHeader == "" {
		c.Header.SecretHeader = "X-Gateway-Secret"
	}
}

// Validate reports the first problem, naming the field. required says
// whether a mode must be chosen (the api role runs).
func (c *Config) Validate(required bool) error {
	switch c.Mode {
	case ModeJWT:
		if c.Header.Secret != "" {
			return errors.New("seckill.auth.header.secret: set, but seckill.auth.mode is jwt")
		}
		_, _, err := c.JWT.key()
		return err
	case ModeHeader:
		if c.JWT.HS256Secret != "" || c.JWT.PublicKey != "" {
			return errors.New("seckill.auth.jwt: a key is set, but seckill.auth.mode is header")
		}
		return c.Header.validate()
	case "":
		if required {
			return errors.New("seckill.auth.mode: required where the api role runs: jwt (a signed token) or header (a trusted gateway); buyers are never taken from the request body")
		}
		return nil
	default:
		return fmt.Errorf("seckill.auth.mode %q: want jwt or header", c.Mode)
	}
}

func (h *Header) validate() error {
	if len(h.Secret) < MinSecret {
		return fmt.Errorf("seckill.auth.header.secret: %d bytes, want at least %d (random, e.g. openssl rand -hex 32; CACHESYNC_GATEWAY_SECRET)", len(h.Secret), MinSecret)
	}
	for _, f := range []struct{ name, v string }{{"user_header", h.UserHeader}, {"secret_header", h.SecretHeader}} {
		if !validHeaderName(f.v) {
			return fmt.Errorf("seckill.auth.header.%s %q: not a header name", f.name, f.v)
		}
	}
	if http.CanonicalHeaderKey(h.UserHeader) == http.CanonicalHeaderKey(h.SecretHeader) {
		return errors.New("seckill.auth.header: user_header and secret_header must differ")
	}
	return nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z') {
			return false
		}
	}
	return true
}

// key returns the verification key and the one algorithm accepted.
func (j *JWT) key() (any, string, error) {
	if j.Leeway < 0 || j.Leeway > maxLeeway {
		return nil, "", fmt.Errorf("seckill.auth.jwt.leeway %s: want 0..%s", j.Leeway, maxLeeway)
	}
	if j.UserClaim == "" {
		return nil, "", errors.New("seckill.auth.jwt.user_claim: empty")
	}
	switch {
	case j.HS256Secret != "" && j.PublicKey != "":
		return nil, "", errors.New("seckill.auth.jwt: set hs256_secret or public_key, not both")
	case j.HS256Secret != "":
		if len(j.HS256Secret) < MinSecret {
			return nil, "", fmt.Errorf("seckill.auth.jwt.hs256_secret: %d bytes, want at least %d (random, e.g. openssl rand -hex 32; CACHESYNC_JWT_SECRET)", len(j.HS256Secret), MinSecret)
		}
		if j.Algorithm != "" && j.Algorithm != "HS256" {
			return nil, "", fmt.Errorf("seckill.auth.jwt.algorithm %q: an hs256_secret verifies HS256 only", j.Algorithm)
		}
		return []byte(j.HS256Secret), "HS256", nil
	case j.PublicKey != "":
		key, err := readPublicKey(j.PublicKey)
		if err != nil {
			return nil, "", fmt.Errorf("seckill.auth.jwt.public_key %s: %w", j.PublicKey, err)
		}
		alg, err := algorithmFor(key, j.Algorithm)
		if err != nil {
			return nil, "", fmt.Errorf("seckill.auth.jwt.algorithm: %w", err)
		}
		return key, alg, nil
	}
	return nil, "", errors.New("seckill.auth.jwt: set hs256_secret (CACHESYNC_JWT_SECRET) or public_key")
}

func readPublicKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	switch blk.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(blk.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY (a public key, never a private one)", blk.Type)
	}
	if err != nil {
		return nil, err
	}
	if k, ok := key.(*rsa.PublicKey); ok && k.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
	}
	return key, nil
}

// algorithmFor returns the algorithm a key verifies: want if it fits the
// key, else its default.
func algorithmFor(key any, want string) (string, error) {
	var allowed []string
	switch k := key.(type) {
	case *rsa.PublicKey:
		allowed = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			allowed = []string{"ES256"}
		case elliptic.P384():
			allowed = []string{"ES384"}
		case elliptic.P521():
			allowed = []string{"ES512"}
		default:
			return "", errors.New("unsupported ECDSA curve")
		}
	case ed25519.PublicKey:
		allowed = []string{"EdDSA"}
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	if want == "" {
		return allowed[0], nil
	}
	if !slices.Contains(allowed, want) {
		return "", fmt.Errorf("%q does not fit the key: want one of %v", want, allowed)
	}
	return want, nil
}
