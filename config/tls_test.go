package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
)

// Bad TLS blocks (mysql.tls, redis.tls, seckill.kafka.tls) and SASL PLAIN
// without TLS: the error names the field.
func TestBadTLSConfigs(t *testing.T) {
	want := map[string][]string{
		"mysql_cert_without_key.yaml":          {"mysql.tls.cert: set without mysql.tls.key"},
		"mysql_ca_missing.yaml":                {"mysql.tls.ca", "/nonexistent/cachesync/ca.pem", "no such file"},
		"mysql_unknown_field.yaml":             {"field ca_file not found"},
		"redis_key_without_cert.yaml":          {"redis.tls.key: set without redis.tls.cert"},
		"redis_cluster_cert_without_key.yaml":  {"redis.tls.cert: set without redis.tls.key"},
		"redis_disabled_with_ca.yaml":          {"redis.tls.enabled is false", "redis.tls.ca is set"},
		"redis_insecure_with_ca.yaml":          {"redis.tls.insecure_skip_verify", "redis.tls.ca would be ignored"},
		"redis_insecure_with_server_name.yaml": {"redis.tls.insecure_skip_verify", "redis.tls.server_name would be ignored"},
		"kafka_plain_without_tls.yaml":         {"seckill.kafka.mechanism PLAIN", "in clear", "seckill.kafka.tls"},
		"kafka_plain_tls_disabled.yaml":        {"seckill.kafka.mechanism PLAIN", "seckill.kafka.tls"},
		"kafka_ca_not_pem.yaml":                {"seckill.kafka.tls.ca", "no PEM certificate"},
		"kafka_enabled_not_bool.yaml":          {"sometimes", "bool"},
		"http_cert_without_key.yaml":           {"http.tls.cert: set without http.tls.key"},
		"admin_client_ca_alone.yaml":           {"admin.tls.client_ca", "needs admin.tls.cert"},
		"admin_unknown_field.yaml":             {"field ca not found"},
	}
	checkBadFiles(t, "testdata/tls_bad", want)
}

// TLS blocks with real files load; a key that belongs to another
// certificate is named with both fields.
func TestTLSConfig(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	yaml := func(kafkaKey string) string {
		return fmt.Sprintf(`mysql:
  tls: {ca: %[1]s, cert: %[2]s, key: %[3]s}
redis:
  tls: {ca: %[1]s, server_name: localhost}
sink:
  rules:
    - {table: shop.sk_items, kind: mirror, key: "sk:{{{id}}}:stock", column: stock}
    - {table: shop.sk_items, kind: member, key: "sk:items", member: "{id}"}
seckill:
  enabled: true
  auth: {mode: jwt, jwt: {hs256_secret: 0123456789abcdef0123456789abcdef}}
  kafka:
    username: shop
    password: secret
    mechanism: PLAIN
    tls: {ca: %[1]s, cert: %[2]s, key: %[4]s}
`, f.CA, f.ClientCert, f.ClientKey, kafkaKey)
	}
	c, err := Parse([]byte(yaml(f.ClientKey)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.MySQL.TLS.On() || c.MySQL.TLS.Key != f.ClientKey || !c.Redis.TLS.On() || c.Redis.TLS.ServerName != "localhost" ||
		!c.Seckill.Kafka.TLS.On() || c.Seckill.Kafka.TLS.CA != f.CA {
		t.Errorf("parsed: mysql %+v, redis %+v, kafka %+v", c.MySQL.TLS, c.Redis.TLS, c.Seckill.Kafka.TLS)
	}
	if c := mustParse(t, ""); c.MySQL.TLS.On() || c.Redis.TLS.On() || c.Seckill.Kafka.TLS.On() {
		t.Errorf("TLS on without a tls block")
	}
	_, err = Parse([]byte(yaml(f.ServerKey)), nil)
	if err == nil || !strings.Contains(err.Error(), "seckill.kafka.tls.cert") || !strings.Contains(err.Error(), "seckill.kafka.tls.key") ||
		!strings.Contains(err.Error(), "does not match") {
		t.Errorf("another certificate's key: %v", err)
	}
}

func mustParse(t *testing.T, extra string) *Config {
	t.Helper()
	c, err := Parse([]byte("sink:\n  rules:\n    - {table: shop.t, kind: invalidate, keys: [\"k:{id}\"]}\n"+extra), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
