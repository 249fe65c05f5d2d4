package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/seckill/auth"
)

// TestTokenCommand: `cachesync token` prints only a token that the
// daemon's authenticator of the same configuration accepts for the user;
// it refuses what it cannot sign.
func TestTokenCommand(t *testing.T) {
	const secret = "cli-test-secret-0123456789abcdef-xyz"
	dir := t.TempDir()
	write := func(name, authYAML string) string {
		p := filepath.Join(dir, name)
		y := "sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n  auth: " + authYAML + "\n"
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	jwtCfg := write("jwt.yaml", "{mode: jwt, jwt: {issuer: shop, audience: sale}}")
	t.Setenv("CACHESYNC_JWT_SECRET", secret)
	code, out, errOut := cliRun("token", "-config", jwtCfg, "-user", "42", "-ttl", "5m")
	if code != 0 || errOut != "" || strings.Count(out, "\n") != 1 {
		t.Fatalf("token: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	a, err := auth.New(auth.Config{Mode: auth.ModeJWT, JWT: auth.JWT{HS256Secret: secret, Issuer: "shop", Audience: "sale", UserClaim: "sub", Leeway: 0}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(out))
	if user, err := a.User(r); err != nil || user != 42 {
		t.Errorf("the printed token: user %d, %v; want 42", user, err)
	}

	t.Setenv("CACHESYNC_JWT_SECRET", "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"token", "-config", jwtCfg}, 2, "-user: want a positive integer"},
		{[]string{"token", "-config", jwtCfg, "-user", "-1"}, 2, "-user: want a positive integer"},
		{[]string{"token", "-config", jwtCfg, "-user", "1", "-ttl", "0s"}, 2, "-ttl"},
		{[]string{"token", "-config", write("header.yaml", "{mode: header, header: {secret: "+secret+"}}"), "-user", "1"}, 2, `seckill.auth.mode is "header", not jwt`},
		{[]string{"token", "-config", jwtCfg, "-user", "1"}, 2, "CACHESYNC_JWT_SECRET"}, // no secret: the config does not load
	} {
		code, out, errOut := cliRun(tc.args...)
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("cachesync %s: exit %d, stdout %q, stderr %q; want %d and %q", strings.Join(tc.args, " "), code, out, errOut, tc.code, tc.want)
		}
	}
}
