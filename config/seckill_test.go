package config

import (
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/seckill"
)

func TestBadSeckillConfigs(t *testing.T) {
	want := map[string][]string{
		"roles_unknown.yaml":                {"seckill.roles", "cron"},
		"roles_twice.yaml":                  {"seckill.roles", "twice"},
		"database_bad.yaml":                 {"seckill.database", "shop;drop"},
		"key_prefix_braces.yaml":            {"seckill.key_prefix", "braces"},
		"broker_no_port.yaml":               {"seckill.kafka.brokers", "localhost"},
		"dlq_same_topic.yaml":               {"seckill.kafka.dead_letter_topic", "must differ"},
		"session_timeout_short.yaml":        {"seckill.kafka.session_timeout", "100ms"},
		"mechanism_bad.yaml":                {"seckill.kafka.mechanism", "GSSAPI"},
		"instance_id_bad.yaml":              {"seckill.kafka.instance_id", `"host 1/a"`},
		"orphan_age_small.yaml":             {"seckill.orphan_age", "produce_timeout"},
		"outbox_age_small.yaml":             {"seckill.outbox_age 3s", "must exceed produce_timeout 3s"},
		"unpaid_negative.yaml":              {"seckill.unpaid_timeout", "-1s"},
		"retry_attempts.yaml":               {"seckill.retry.attempts", "1000"},
		"limits_negative.yaml":              {"seckill.limits", "negative"},
		"check_interval_negative.yaml":      {"seckill.check_interval", "-5s"},
		"produce_timeout_not_duration.yaml": {"soon", "time.Duration"},
		"admin_token_short.yaml":            {"seckill.admin_token", "16 bytes", "at least 32"},
		"write_timeout_under_produce.yaml":  {"http.write_timeout", "2s", "seckill.produce_timeout 3s"},
		"auth_missing.yaml":                 {"seckill.auth.mode", "required", "never taken from the request body"},
		"auth_mode_none.yaml":               {"seckill.auth.mode", `"none"`, "want jwt or header"},
		"auth_both_modes.yaml":              {"seckill.auth.header.secret", "mode is jwt"},
		"jwt_no_key.yaml":                   {"seckill.auth.jwt", "hs256_secret", "public_key"},
		"jwt_secret_short.yaml":             {"seckill.auth.jwt.hs256_secret", "16 bytes", "at least 32"},
		"jwt_both_keys.yaml":                {"seckill.auth.jwt", "not both"},
		"jwt_alg_none.yaml":                 {"seckill.auth.jwt.algorithm", `"none"`, "HS256 only"},
		"jwt_public_key_missing.yaml":       {"seckill.auth.jwt.public_key", "missing.pem", "no such file"},
		"jwt_leeway_long.yaml":              {"seckill.auth.jwt.leeway", "1h0m0s"},
		"header_secret_short.yaml":          {"seckill.auth.header.secret", "5 bytes", "at least 32"},
		"header_name_bad.yaml":              {"seckill.auth.header.user_header", `"X User"`},
		"trusted_proxies_bad.yaml":          {"seckill.trusted_proxies[1]", "proxy.example"},
		"account_password_only.yaml":        {"seckill.mysql.password", "without seckill.mysql.user"},
		"known_items_missing.yaml":          {"sink.rules", "known-items rule", `key: "sk:items", member: "{id}"`, "404"},
		"known_items_when.yaml":             {"sink.rules[1]", "known-items rule must be exactly", "no when"},
		"known_items_prefix.yaml":           {"sink.rules", "known-items rule", `key: "sale:items"`},
	}
	checkBadFiles(t, "testdata/seckill_bad", want)
}

// saleAuth is a valid seckill.auth section (a 32-byte test secret).
const saleAuth = "  auth: {mode: jwt, jwt: {hs256_secret: 0123456789abcdef0123456789abcdef}}\n"

func TestSeckillDefaults(t *testing.T) {
	c, err := Parse([]byte("sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n"+saleAuth), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Seckill
	if s.Database != "shop" || s.KeyPrefix != "sk:" || len(s.Roles) != 3 || s.Kafka.Topic != "cachesync.orders" ||
		s.Kafka.DeadLetterTopic != "cachesync.orders.dlq" || s.ProduceTimeout != 3*time.Second || s.OrphanAge != 10*time.Minute ||
		s.Retry.Attempts != 5 || s.CheckInterval != 0 || s.OutboxAge != seckill.DefaultOutboxAge {
		t.Errorf("defaults = %+v", s)
	}
	// The consumer is a static member named after the host and the
	// daemon's replica id (mysql.server_id, 4242 by default).
	if want := seckill.DefaultInstanceID(4242); s.Kafka.InstanceID != want || !strings.HasPrefix(want, "cachesync-") || !strings.HasSuffix(want, "-4242") {
		t.Errorf("instance_id %q, want %q", s.Kafka.InstanceID, want)
	}
	// The per-IP limit is on unless set to 0; buyers' tokens carry sub.
	if s.Limits.PerIP == nil || *s.Limits.PerIP != seckill.DefaultPerIP || s.Auth.JWT.UserClaim != "sub" || s.Auth.JWT.Leeway != 30*time.Second {
		t.Errorf("defaults: per_ip %v, auth %+v", s.Limits.PerIP, s.Auth)
	}
	c, err = Parse([]byte("sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n  limits: {per_ip: 0}\n"+saleAuth), nil)
	if err != nil || *c.Seckill.Limits.PerIP != 0 {
		t.Errorf("per_ip: 0 (off): %v", err)
	}
	// outbox_age follows a long produce_timeout, so the API's own produce
	// is over before the jobs leader produces the order again.
	c, err = Parse([]byte("sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n  produce_timeout: 10s\n"+saleAuth), nil)
	if err != nil || c.Seckill.OutboxAge != 12*time.Second {
		t.Errorf("outbox_age with produce_timeout 10s: %v %v, want 12s", c.Seckill.OutboxAge, err)
	}
	// Without the api role no buyer is served: no auth needed.
	if _, err := Parse([]byte("sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n  roles: [consumer, jobs]\n"), nil); err != nil {
		t.Errorf("consumer and jobs only, no auth: %v", err)
	}
	// Disabled: nothing is validated.
	if _, err := Parse([]byte("sink:\n  rules:\n    - {table: shop.t, kind: invalidate, keys: [\"k:{id}\"]}\nseckill:\n  roles: [bogus]\n"), nil); err != nil {
		t.Errorf("disabled sale validated: %v", err)
	}
}

// TestAdminToken: a token shorter than 32 bytes is refused, from the file
// or the environment (then naming the variable), without the token in the
// message; 32 bytes pass; none at all leaves the admin endpoints off.
func TestAdminToken(t *testing.T) {
	const sale = "sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n" + saleAuth
	short := "short-but-secret-31-bytes-xxxxx"
	for _, tc := range []struct {
		name string
		yaml string
		env  map[string]string
		want []string
	}{
		{"file", sale + "  admin_token: " + short + "\n", nil, []string{"seckill.admin_token", "31 bytes", "at least 32"}},
		{"env", sale, map[string]string{"CACHESYNC_ADMIN_TOKEN": short}, []string{"seckill.admin_token", "31 bytes", "CACHESYNC_ADMIN_TOKEN"}},
	} {
		_, err := Parse([]byte(tc.yaml), envMap(tc.env))
		if err == nil {
			t.Errorf("%s: a %d-byte token was accepted", tc.name, len(short))
			continue
		}
		for _, s := range tc.want {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not contain %q", tc.name, err, s)
			}
		}
		if strings.Contains(err.Error(), short) {
			t.Errorf("%s: error %q shows the token", tc.name, err)
		}
	}
	ok := strings.Repeat("k", 32)
	c, err := Parse([]byte(sale), envMap(map[string]string{"CACHESYNC_ADMIN_TOKEN": ok}))
	if err != nil || c.Seckill.AdminToken != ok {
		t.Errorf("a 32-byte token: %v", err)
	}
	if c, err := Parse([]byte(sale), noEnv); err != nil || c.Seckill.AdminToken != "" {
		t.Errorf("no token: %v, token %q; want no error and no default token", err, c.Seckill.AdminToken)
	}
}

// TestAuthSecretsFromEnv: the buyers' secrets come from the environment;
// a short one is refused naming the variable, never showing the secret.
func TestAuthSecretsFromEnv(t *testing.T) {
	const sale = "sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\n    - {table: shop.sk_items, kind: member, key: \"sk:items\", member: \"{id}\"}\nseckill:\n  enabled: true\n"
	short := "short-secret-of-31-bytes-xxxxxx"
	for _, tc := range []struct{ mode, env, field string }{
		{"jwt", "CACHESYNC_JWT_SECRET", "seckill.auth.jwt.hs256_secret"},
		{"header", "CACHESYNC_GATEWAY_SECRET", "seckill.auth.header.secret"},
	} {
		yaml := sale + "  auth: {mode: " + tc.mode + "}\n"
		_, err := Parse([]byte(yaml), envMap(map[string]string{tc.env: short}))
		if err == nil || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.env) || !strings.Contains(err.Error(), "31 bytes") {
			t.Errorf("%s with a short %s: %v", tc.mode, tc.env, err)
		} else if strings.Contains(err.Error(), short) {
			t.Errorf("%s: error %q shows the secret", tc.mode, err)
		}
		good := strings.Repeat("s", 32)
		c, err := Parse([]byte(yaml), envMap(map[string]string{tc.env: good}))
		if err != nil {
			t.Errorf("%s with a 32-byte %s: %v", tc.mode, tc.env, err)
			continue
		}
		if got := map[string]string{"jwt": c.Seckill.Auth.JWT.HS256Secret, "header": c.Seckill.Auth.Header.Secret}[tc.mode]; got != good {
			t.Errorf("%s: secret %q not taken from %s", tc.mode, got, tc.env)
		}
	}
}
