package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		"orphan_age_small.yaml":             {"seckill.orphan_age", "produce_timeout"},
		"unpaid_negative.yaml":              {"seckill.unpaid_timeout", "-1s"},
		"retry_attempts.yaml":               {"seckill.retry.attempts", "1000"},
		"limits_negative.yaml":              {"seckill.limits", "negative"},
		"check_interval_negative.yaml":      {"seckill.check_interval", "-5s"},
		"produce_timeout_not_duration.yaml": {"soon", "time.Duration"},
		"admin_token_short.yaml":            {"seckill.admin_token", "16 bytes", "at least 32"},
		"write_timeout_under_produce.yaml":  {"http.write_timeout", "2s", "seckill.produce_timeout 3s"},
		"account_password_only.yaml":        {"seckill.mysql.password", "without seckill.mysql.user"},
	}
	files, err := filepath.Glob("testdata/seckill_bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("%d files in testdata/seckill_bad, %d in the table", len(files), len(want))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			subs, ok := want[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			c, err := Load(f, nil)
			if err == nil {
				t.Fatalf("Load succeeded, want an error containing %q; got %+v", subs, c.Seckill)
			}
			for _, s := range subs {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestSeckillDefaults(t *testing.T) {
	c, err := Parse([]byte("sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\nseckill:\n  enabled: true\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Seckill
	if s.Database != "shop" || s.KeyPrefix != "sk:" || len(s.Roles) != 3 || s.Kafka.Topic != "cachesync.orders" ||
		s.Kafka.DeadLetterTopic != "cachesync.orders.dlq" || s.ProduceTimeout != 3*time.Second || s.OrphanAge != 10*time.Minute ||
		s.Retry.Attempts != 5 || s.CheckInterval != 0 {
		t.Errorf("defaults = %+v", s)
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
	const sale = "sink:\n  rules:\n    - {table: shop.sk_items, kind: mirror, key: \"sk:{{{id}}}:stock\", column: stock}\nseckill:\n  enabled: true\n"
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
