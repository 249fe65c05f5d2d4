package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "0123456789abcdef0123456789abcdef"

func newAuth(t *testing.T, cfg Config) *Authenticator {
	t.Helper()
	cfg.SetDefaults()
	if err := cfg.Validate(true); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unsigned builds header.payload. with no signature (alg none).
func unsigned(header, claims map[string]any) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	return enc(header) + "." + enc(claims) + "."
}

func check(t *testing.T, a *Authenticator, name, authz string, wantUser int64, wantReason string) {
	t.Helper()
	r := httptest.NewRequest("POST", "/seckill/items/1/reservations", nil)
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	user, err := a.User(r)
	var f *Failure
	switch {
	case wantReason == "" && (err != nil || user != wantUser):
		t.Errorf("%s: user %d, %v; want %d", name, user, err, wantUser)
	case wantReason != "" && (!errors.As(err, &f) || f.Reason != wantReason):
		t.Errorf("%s: user %d, %v; want a %q failure", name, user, err, wantReason)
	}
}

// TestJWTHMAC: only HS256 tokens signed with the secret, unexpired, with a
// positive integer sub pass; everything else fails with its reason.
func TestJWTHMAC(t *testing.T) {
	a := newAuth(t, Config{Mode: ModeJWT, JWT: JWT{HS256Secret: secret, Issuer: "shop", Audience: "sale"}})
	now := time.Now()
	ok := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "42", "iss": "shop", "aud": "sale", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	hs := func(c jwt.MapClaims) string { return "Bearer " + sign(t, jwt.SigningMethodHS256, []byte(secret), c) }
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		name, authz string
		user        int64
		reason      string
	}{
		{"valid", hs(ok(nil)), 42, ""},
		{"lowercase scheme", "bearer " + strings.TrimPrefix(hs(ok(nil)), "Bearer "), 42, ""},
		{"sub as a number", hs(ok(jwt.MapClaims{"sub": json.Number("9007199254740993")})), 9007199254740993, ""},
		{"expired within leeway", hs(ok(jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix()})), 42, ""},
		{"none", "", 0, "missing"},
		{"basic", "Basic dXNlcjpwdw==", 0, "malformed"},
		{"garbage", "Bearer not.a.token", 0, "malformed"},
		{"too long", "Bearer " + strings.Repeat("a", maxToken+1), 0, "malformed"},
		{"wrong secret", "Bearer " + sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), ok(nil)), 0, "signature"},
		{"HS512 with the secret", "Bearer " + sign(t, jwt.SigningMethodHS512, []byte(secret), ok(nil)), 0, "signature"},
		{"alg none", "Bearer " + unsigned(map[string]any{"alg": "none", "typ": "JWT"}, ok(nil)), 0, "signature"},
		{"RS256", "Bearer " + sign(t, jwt.SigningMethodRS256, rsaKey, ok(nil)), 0, "signature"},
		{"tampered payload", tamper(hs(ok(nil))), 0, "signature"},
		{"crit header", "Bearer " + signWithHeader(t, map[string]any{"crit": []string{"exp"}}, ok(nil)), 0, "signature"},
		{"expired", hs(ok(jwt.MapClaims{"exp": now.Add(-time.Hour).Unix()})), 0, "expired"},
		{"no exp", hs(ok(jwt.MapClaims{"exp": nil})), 0, "claims"},
		{"issued in the future", hs(ok(jwt.MapClaims{"iat": now.Add(time.Hour).Unix()})), 0, "claims"},
		{"not valid yet", hs(ok(jwt.MapClaims{"nbf": now.Add(time.Hour).Unix()})), 0, "claims"},
		{"wrong issuer", hs(ok(jwt.MapClaims{"iss": "evil"})), 0, "claims"},
		{"no audience", hs(ok(jwt.MapClaims{"aud": nil})), 0, "claims"},
		{"wrong audience", hs(ok(jwt.MapClaims{"aud": []string{"other"}})), 0, "claims"},
		{"no sub", hs(ok(jwt.MapClaims{"sub": nil})), 0, "user"},
		{"sub 0", hs(ok(jwt.MapClaims{"sub": "0"})), 0, "user"},
		{"sub negative", hs(ok(jwt.MapClaims{"sub": "-1"})), 0, "user"},
		{"sub leading zero", hs(ok(jwt.MapClaims{"sub": "042"})), 0, "user"},
		{"sub plus", hs(ok(jwt.MapClaims{"sub": "+42"})), 0, "user"},
		{"sub exponent", hs(ok(jwt.MapClaims{"sub": json.Number("4e1")})), 0, "user"},
		{"sub fraction", hs(ok(jwt.MapClaims{"sub": json.Number("42.0")})), 0, "user"},
		{"sub name", hs(ok(jwt.MapClaims{"sub": "alice"})), 0, "user"},
		{"sub beyond int64", hs(ok(jwt.MapClaims{"sub": "9223372036854775808"})), 0, "user"},
	} {
		check(t, a, tc.name, tc.authz, tc.user, tc.reason)
	}
}

func tamper(authz string) string {
	parts := strings.Split(strings.TrimPrefix(authz, "Bearer "), ".")
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	b = []byte(strings.Replace(string(b), `"42"`, `"43"`, 1))
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return "Bearer " + strings.Join(parts, ".")
}

func signWithHeader(t *testing.T, hdr map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	for k, v := range hdr {
		tok.Header[k] = v
	}
	s, err := tok.SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writePEM writes a public key file and returns its path.
func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func notPEM(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pkix(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestJWTPublicKeys: each key type verifies its own algorithm only; an
// HS256 token "signed" with the public key's bytes (algorithm confusion)
// is refused.
func TestJWTPublicKeys(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	claims := jwt.MapClaims{"sub": "7", "exp": time.Now().Add(time.Minute).Unix()}
	for _, tc := range []struct {
		name    string
		der     []byte
		typ     string
		alg     string // configured
		good    string // a valid token
		bad     []string
		wantAlg string
	}{
		{"RSA", pkix(t, &rsaKey.PublicKey), "PUBLIC KEY", "", sign(t, jwt.SigningMethodRS256, rsaKey, claims),
			[]string{sign(t, jwt.SigningMethodPS256, rsaKey, claims), sign(t, jwt.SigningMethodHS256, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix(t, &rsaKey.PublicKey)}), claims)}, "RS256"},
		{"RSA PKCS1, PS256", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey), "RSA PUBLIC KEY", "PS256", sign(t, jwt.SigningMethodPS256, rsaKey, claims),
			[]string{sign(t, jwt.SigningMethodRS256, rsaKey, claims)}, "PS256"},
		{"ECDSA P-256", pkix(t, &ecKey.PublicKey), "PUBLIC KEY", "", sign(t, jwt.SigningMethodES256, ecKey, claims),
			[]string{sign(t, jwt.SigningMethodHS256, pkix(t, &ecKey.PublicKey), claims)}, "ES256"},
		{"Ed25519", pkix(t, edPub), "PUBLIC KEY", "", sign(t, jwt.SigningMethodEdDSA, edKey, claims),
			[]string{sign(t, jwt.SigningMethodHS256, []byte(edPub), claims)}, "EdDSA"},
	} {
		cfg := Config{Mode: ModeJWT, JWT: JWT{PublicKey: writePEM(t, tc.typ, tc.der), Algorithm: tc.alg}}
		a := newAuth(t, cfg)
		if a.alg != tc.wantAlg {
			t.Errorf("%s: algorithm %s, want %s", tc.name, a.alg, tc.wantAlg)
		}
		check(t, a, tc.name+" valid", "Bearer "+tc.good, 7, "")
		for i, b := range tc.bad {
			check(t, a, tc.name+" other alg "+string(rune('a'+i)), "Bearer "+b, 0, "signature")
		}
	}
}

// TestKeyConfigRefused: private keys, short RSA keys and algorithms that
// do not fit the key are refused at load.
func TestKeyConfigRefused(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	priv, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	for _, tc := range []struct {
		name string
		jwt  JWT
		want string
	}{
		{"private key", JWT{PublicKey: writePEM(t, "PRIVATE KEY", priv)}, "never a private one"},
		{"RSA 1024", JWT{PublicKey: writePEM(t, "PUBLIC KEY", pkix(t, &small.PublicKey))}, "1024 bits"},
		{"ES256 on P-384", JWT{PublicKey: writePEM(t, "PUBLIC KEY", pkix(t, &ec384.PublicKey)), Algorithm: "ES256"}, "ES384"},
		{"HS256 on RSA", JWT{PublicKey: writePEM(t, "PUBLIC KEY", pkix(t, &rsaKey.PublicKey)), Algorithm: "HS256"}, "does not fit"},
		{"missing file", JWT{PublicKey: filepath.Join(t.TempDir(), "missing.pem")}, "no such file"},
		{"not PEM", JWT{PublicKey: notPEM(t)}, "no PEM block"},
	} {
		cfg := Config{Mode: ModeJWT, JWT: tc.jwt}
		cfg.SetDefaults()
		err := cfg.Validate(true)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestGatewayHeader: the user header counts only with the gateway's
// secret, exactly once each.
func TestGatewayHeader(t *testing.T) {
	a := newAuth(t, Config{Mode: ModeHeader, Header: Header{Secret: secret}})
	for _, tc := range []struct {
		name   string
		hdr    [][2]string
		user   int64
		reason string
	}{
		{"valid", [][2]string{{"X-Gateway-Secret", secret}, {"X-User-Id", "42"}}, 42, ""},
		{"nothing", nil, 0, "missing"},
		{"user only", [][2]string{{"X-User-Id", "42"}}, 0, "gateway"},
		{"wrong secret", [][2]string{{"X-Gateway-Secret", strings.Repeat("x", 32)}, {"X-User-Id", "42"}}, 0, "gateway"},
		{"secret prefix", [][2]string{{"X-Gateway-Secret", secret[:31]}, {"X-User-Id", "42"}}, 0, "gateway"},
		{"two secrets", [][2]string{{"X-Gateway-Secret", secret}, {"X-Gateway-Secret", secret}, {"X-User-Id", "42"}}, 0, "gateway"},
		{"no user", [][2]string{{"X-Gateway-Secret", secret}}, 0, "user"},
		{"two users", [][2]string{{"X-Gateway-Secret", secret}, {"X-User-Id", "42"}, {"X-User-Id", "43"}}, 0, "user"},
		{"bad user", [][2]string{{"X-Gateway-Secret", secret}, {"X-User-Id", "42abc"}}, 0, "user"},
	} {
		r := httptest.NewRequest("POST", "/", nil)
		for _, h := range tc.hdr {
			r.Header.Add(h[0], h[1])
		}
		user, err := a.User(r)
		var f *Failure
		if tc.reason == "" && (err != nil || user != tc.user) || tc.reason != "" && (!errors.As(err, &f) || f.Reason != tc.reason) {
			t.Errorf("%s: %d, %v; want %d %q", tc.name, user, err, tc.user, tc.reason)
		}
	}
}

// TestMint: a minted token passes the verifier of the same configuration
// (user claim, issuer, audience) and no other.
func TestMint(t *testing.T) {
	cfg := Config{Mode: ModeJWT, JWT: JWT{HS256Secret: secret, Issuer: "shop", Audience: "sale", UserClaim: "uid"}}
	a := newAuth(t, cfg)
	tok, err := Mint(cfg.JWT, 77, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	check(t, a, "minted", "Bearer "+tok, 77, "")
	other := newAuth(t, Config{Mode: ModeJWT, JWT: JWT{HS256Secret: secret, Issuer: "other"}})
	check(t, other, "minted, other issuer", "Bearer "+tok, 0, "claims")
	old, _ := Mint(cfg.JWT, 77, time.Minute, time.Now().Add(-time.Hour))
	check(t, a, "minted an hour ago", "Bearer "+old, 0, "expired")
	if _, err := Mint(JWT{PublicKey: "k.pem"}, 1, time.Minute, time.Now()); err == nil {
		t.Error("minting without an HMAC secret succeeded")
	}
}

// BenchmarkUserJWT is the verification every buyer request pays: parse,
// HS256 check, claims.
func BenchmarkUserJWT(b *testing.B) {
	cfg := Config{Mode: ModeJWT, JWT: JWT{HS256Secret: secret}}
	cfg.SetDefaults()
	a, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := Mint(cfg.JWT, 123456789, time.Hour, time.Now())
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.User(r); err != nil {
			b.Fatal(err)
		}
	}
}
