package config

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/leader"
)

// noEnv is a lookup that finds nothing: tests must not depend on the
// environment of the machine that runs them.
func noEnv(string) (string, bool) { return "", false }

// envMap returns a lookup backed by m.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestGoodConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no files in testdata/good")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f, noEnv)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("loaded config does not validate again: %v", err)
			}
		})
	}
}

func TestBadConfigs(t *testing.T) {
	// File name -> substrings the error must contain: the field it names
	// and, where it helps, the offending value or the rule's position.
	want := map[string][]string{
		"unknown_top_field.yaml":                 {"keyz", "line 1"},
		"unknown_nested_field.yaml":              {"keyz", "line 5"},
		"unknown_mysql_field.yaml":               {"field adr not found"},
		"mysql_addr_no_port.yaml":                {"mysql.addr", `"localhost"`},
		"mysql_addr_bad_port.yaml":               {"mysql.addr", "70000", "port"},
		"mysql_addr_no_host.yaml":                {"mysql.addr", `":3306"`},
		"mysql_flavor.yaml":                      {"mysql.flavor", "postgres"},
		"mysql_start_from.yaml":                  {"mysql.start.from", "beginning"},
		"start_position_missing.yaml":            {"mysql.start.position", "file:pos"},
		"start_position_bad.yaml":                {"mysql.start.position", "bad offset"},
		"start_position_no_offset.yaml":          {"mysql.start.position", "file:pos"},
		"start_position_no_number.yaml":          {"mysql.start.position", "numeric suffix"},
		"start_gtid_missing.yaml":                {"mysql.start.gtid", "required"},
		"heartbeat_too_short.yaml":               {"mysql.heartbeat", "10ms"},
		"heartbeat_too_long.yaml":                {"mysql.heartbeat", "5m"},
		"heartbeat_not_duration.yaml":            {"soon", "time.Duration"},
		"max_txn_changes_small.yaml":             {"mysql.max_txn_changes", "10"},
		"server_id_negative.yaml":                {"-1", "uint32"},
		"redis_addr_no_port.yaml":                {"redis.addr", `"localhost"`},
		"redis_addr_bad_port.yaml":               {"redis.addr", "port"},
		"redis_db_negative.yaml":                 {"redis.db", "-1"},
		"cache_load_timeout_short.yaml":          {"cache.load_timeout", "1ms"},
		"ha_lease_ttl_short.yaml":                {"ha.lease_ttl", "50ms"},
		"runtime_gc_percent_small.yaml":          {"runtime.gc_percent", "5"},
		"runtime_memory_limit_small.yaml":        {"runtime.memory_limit", "1048576", "64 MiB"},
		"ha_renew_too_slow.yaml":                 {"ha.renew_interval", "2s", "half"},
		"ha_poll_too_slow.yaml":                  {"ha.poll_interval", "4s"},
		"redis_db_too_big.yaml":                  {"redis.db", "16"},
		"redis_mode_unknown.yaml":                {"redis.mode", `"replica"`, "want standalone, sentinel or cluster"},
		"sentinel_no_master_name.yaml":           {"redis.master_name", "required in sentinel mode"},
		"sentinel_no_addrs.yaml":                 {"redis.sentinel_addrs", "at least one host:port"},
		"sentinel_addr_no_port.yaml":             {"redis.sentinel_addrs[1]", `"s2"`, "want host:port"},
		"sentinel_addr_bad_port.yaml":            {"redis.sentinel_addrs[0]", "263790", "bad port"},
		"sentinel_addr_twice.yaml":               {"redis.sentinel_addrs[2]", `"s1:26379"`, "listed twice"},
		"sentinel_with_addr.yaml":                {"redis.addr", `"redis-a:6379"`, "not used in sentinel mode"},
		"standalone_with_master_name.yaml":       {"redis.master_name", "only used in sentinel mode"},
		"standalone_with_sentinel_addrs.yaml":    {"redis.sentinel_addrs", "only used in sentinel mode"},
		"standalone_with_sentinel_password.yaml": {"redis.sentinel_password", "only used in sentinel mode"},
		"standalone_with_addrs.yaml":             {"redis.addrs", "only used in cluster mode", "redis.mode is standalone"},
		"sentinel_with_addrs.yaml":               {"redis.addrs", "only used in cluster mode", "redis.mode is sentinel"},
		"cluster_with_addr.yaml":                 {"redis.addr", `"127.0.0.1:7000"`, "not used in cluster mode", "redis.addrs"},
		"cluster_no_addrs.yaml":                  {"redis.addrs", "at least one host:port required in cluster mode"},
		"cluster_addr_no_port.yaml":              {"redis.addrs[1]", `"n2"`, "want host:port"},
		"cluster_addr_bad_port.yaml":             {"redis.addrs[0]", "70000", "bad port"},
		"cluster_addr_twice.yaml":                {"redis.addrs[2]", `"n1:7000"`, "listed twice"},
		"cluster_db_nonzero.yaml":                {"redis.db 1", "must be 0 in cluster mode"},
		"cluster_with_master_name.yaml":          {"redis.master_name", "only used in sentinel mode", "redis.mode is cluster"},
		"cluster_with_sentinel_addrs.yaml":       {"redis.sentinel_addrs", "only used in sentinel mode", "redis.mode is cluster"},
		"no_rules.yaml":                          {"sink.rules", "at least one rule"},
		"two_documents.yaml":                     {"more than one YAML document"},
		"empty_rules.yaml":                       {"sink.rules", "at least one rule"},
		"rule_table_no_schema.yaml":              {"sink.rules[0]", "table", "schema.table"},
		"rule_no_kind.yaml":                      {"sink.rules[0]", "kind: required"},
		"rule_unknown_kind.yaml":                 {"sink.rules[0]", "kind", "refresh"},
		"invalidate_no_keys.yaml":                {"sink.rules[0]", "keys"},
		"invalidate_empty_key.yaml":              {"sink.rules[0]", "keys[1]", "required for a"},
		"rewrite_no_key.yaml":                    {"sink.rules[0]", "key: required", "rewrite"},
		"template_unclosed.yaml":                 {"sink.rules[0]", "key", "goods:{id", "unclosed"},
		"template_unmatched_close.yaml":          {"sink.rules[0]", "key", "unmatched '}'"},
		"template_empty_column.yaml":             {"sink.rules[0]", "keys[0]", "bad column reference"},
		"mirror_no_column.yaml":                  {"sink.rules[0]", "column: required", "mirror"},
		"member_no_member.yaml":                  {"sink.rules[0]", "member: required"},
		"member_equals_and_in.yaml":              {"sink.rules[0]", "when", "exactly one of equals or in"},
		"member_when_no_column.yaml":             {"sink.rules[0]", "when.column"},
		"member_bad_op.yaml":                     {"sink.rules[0]", "op", `"delete"`, "want sync or remove"},
		"member_bad_value.yaml":                  {"sink.rules[0]", "value", "{order_id", "unclosed"},
		"forbidden_value_on_mirror.yaml":         {"sink.rules[0]", "value", "not used by a mirror rule"},
		"forbidden_op_on_rewrite.yaml":           {"sink.rules[0]", "op", "not used by a rewrite rule"},
		"forbidden_column_on_rewrite.yaml":       {"sink.rules[0]", "column", "not used by a rewrite rule"},
		"forbidden_when_on_invalidate.yaml":      {"sink.rules[0]", "when", "not used by a invalidate rule"},
		"forbidden_format_on_mirror.yaml":        {"sink.rules[0]", "format", "not used by a mirror rule"},
		"rewrite_bad_format.yaml":                {"sink.rules[0]", "format", "xml"},
		"second_rule_bad.yaml":                   {"sink.rules[1]", "column"},
		"batch_changes_negative.yaml":            {"sink.batch_changes", "-1"},
		"batch_changes_too_big.yaml":             {"sink.batch_changes", "100001"},
		"tombstone_ttl_small.yaml":               {"sink.tombstone_ttl", "30s"},
		"log_level.yaml":                         {"log.level", "verbose"},
		"log_format.yaml":                        {"log.format", "text"},
		"http_addr.yaml":                         {"http.addr", "localhost"},
		"http_read_timeout_negative.yaml":        {"http.read_timeout", "-1s", "at least 1ms"},
		"http_header_timeout_over_read.yaml":     {"http.read_header_timeout", "20s", "read_timeout 10s"},
		"http_max_header_bytes_small.yaml":       {"http.max_header_bytes", "100"},
		"admin_addr.yaml":                        {"admin.addr", "localhost"},
		"admin_same_port.yaml":                   {"admin.addr", "127.0.0.1:9090", "http.addr", "must not share a port"},
		"admin_max_conns_negative.yaml":          {"admin.max_conns", "-1"},
		"admin_idle_timeout_short.yaml":          {"admin.idle_timeout", "500µs"},
		"admin_readyz_timeout_short.yaml":        {"admin.readyz_timeout", "1ms"},
		"wrong_type.yaml":                        {"line 2", "one"},
		"not_yaml.yaml":                          {"yaml"},
		"empty.yaml":                             {"empty file"},
		"comments_only.yaml":                     {"empty file"},
	}
	if n := checkBadFiles(t, "testdata/bad", want); n < 20 {
		t.Errorf("only %d bad files", n)
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), noEnv)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("err = %v, want one naming the file", err)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load("testdata/good/minimal.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"mysql.addr", c.MySQL.Addr, "127.0.0.1:3306"},
		{"mysql.user", c.MySQL.User, "root"},
		{"mysql.flavor", c.MySQL.Flavor, "auto"},
		{"mysql.server_id", c.MySQL.ServerID, uint32(4242)},
		{"mysql.heartbeat", c.MySQL.Heartbeat, time.Second},
		{"mysql.max_txn_changes", c.MySQL.MaxTxnChanges, 100_000},
		{"mysql.start.from", c.MySQL.Start.From, "checkpoint"},
		{"redis.mode", c.Redis.Mode, "standalone"},
		{"redis.addr", c.Redis.Addr, "127.0.0.1:6379"},
		{"redis.db", c.Redis.DB, 0},
		{"sink.key_prefix", c.Sink.KeyPrefix, "cachesync:"},
		{"sink.channel", c.Sink.Channel, "cachesync:invalidations"},
		{"sink.batch_changes", c.Sink.BatchChanges, 2000},
		{"sink.tombstone_ttl", c.Sink.TombstoneTTL, 24 * time.Hour},
		{"http.addr", c.HTTP.Addr, ":9090"},
		{"http.read_header_timeout", c.HTTP.ReadHeaderTimeout, 5 * time.Second},
		{"http.read_timeout", c.HTTP.ReadTimeout, 10 * time.Second},
		{"http.write_timeout", c.HTTP.WriteTimeout, 30 * time.Second},
		{"http.idle_timeout", c.HTTP.IdleTimeout, 30 * time.Second},
		{"http.max_header_bytes", c.HTTP.MaxHeaderBytes, 32 << 10},
		{"http.max_conns", c.HTTP.MaxConns, 4096},
		{"admin.addr", c.Admin.Addr, "127.0.0.1:9091"},
		{"admin.read_header_timeout", c.Admin.ReadHeaderTimeout, 5 * time.Second},
		{"admin.read_timeout", c.Admin.ReadTimeout, 10 * time.Second},
		{"admin.write_timeout", c.Admin.WriteTimeout, 30 * time.Second},
		{"admin.idle_timeout", c.Admin.IdleTimeout, 30 * time.Second},
		{"admin.max_header_bytes", c.Admin.MaxHeaderBytes, 32 << 10},
		{"admin.max_conns", c.Admin.MaxConns, 64},
		{"admin.readyz_interval", c.Admin.ReadyzInterval, time.Second},
		{"admin.readyz_timeout", c.Admin.ReadyzTimeout, 2 * time.Second},
		{"seckill.admin_token", c.Seckill.AdminToken, ""},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "json"},
		{"runtime.gc_percent", c.Runtime.GCPercent, 400},
		{"runtime.memory_limit", c.Runtime.MemoryLimit, int64(256 << 20)},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	// Explicit zeros are defaults too.
	z, err := Load("testdata/good/zero_means_default.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if z.Sink.BatchChanges != 2000 || z.Sink.TombstoneTTL != 24*time.Hour || z.MySQL.Heartbeat != time.Second || z.MySQL.MaxTxnChanges != 100_000 {
		t.Errorf("zeros not defaulted: %+v %+v", z.Sink, z.MySQL)
	}
}

func TestFullConfig(t *testing.T) {
	c, err := Load("testdata/good/full.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.MySQL.Addr != "db.internal:3307" || c.MySQL.User != "cachesync" || c.MySQL.Password != "secret" ||
		c.MySQL.Flavor != "mariadb" || c.MySQL.ServerID != 9001 || c.MySQL.Heartbeat != 2*time.Second ||
		c.MySQL.MaxTxnChanges != 5000 {
		t.Errorf("mysql = %+v", c.MySQL)
	}
	if want := (Redis{Mode: "standalone", Addr: "cache.internal:6380", Username: "cs", Password: "redis-secret", DB: 3}); !reflect.DeepEqual(c.Redis, want) {
		t.Errorf("redis = %+v", c.Redis)
	}
	if c.Sink.KeyPrefix != "cs:" || c.Sink.Channel != "cs:inv" || c.Sink.BatchChanges != 500 || c.Sink.TombstoneTTL != 48*time.Hour {
		t.Errorf("sink = %+v", c.Sink)
	}
	if c.HA != (leader.Config{LeaseTTL: 6 * time.Second, RenewInterval: 2 * time.Second, PollInterval: 500 * time.Millisecond, ID: "node-a"}) {
		t.Errorf("ha = %+v", c.HA)
	}
	if len(c.Sink.Rules) != 6 {
		t.Fatalf("%d rules, want 6", len(c.Sink.Rules))
	}
	r := c.Sink.Rules[5]
	if r.Kind != "member" || r.When == nil || r.When.Column != "status" || !slices.Equal(r.When.In, []string{"on_sale", "preorder"}) {
		t.Errorf("rules[5] = %+v (when %+v)", r, r.When)
	}
	if c.HTTP != (api.Config{Listener: api.Listener{Addr: "127.0.0.1:9191", ReadHeaderTimeout: 2 * time.Second, ReadTimeout: 4 * time.Second,
		WriteTimeout: 20 * time.Second, IdleTimeout: 90 * time.Second, MaxHeaderBytes: 8192, MaxConns: 500}}) ||
		c.Log != (Log{Level: "debug", Format: "console"}) {
		t.Errorf("http = %+v, log = %+v", c.HTTP, c.Log)
	}
	if c.Admin != (api.AdminConfig{Listener: api.Listener{Addr: "10.0.0.9:9192", ReadHeaderTimeout: time.Second, ReadTimeout: 3 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 45 * time.Second, MaxHeaderBytes: 4096, MaxConns: 16},
		ReadyzInterval: 500 * time.Millisecond, ReadyzTimeout: 750 * time.Millisecond}) {
		t.Errorf("admin = %+v", c.Admin)
	}
	if c.Runtime != (Runtime{GCPercent: 200, MemoryLimit: 1 << 30}) {
		t.Errorf("runtime = %+v", c.Runtime)
	}
}

func TestEnvOverrides(t *testing.T) {
	// The Sentinel variables go with a sentinel-mode file, the cluster's
	// with a cluster-mode file, the others with the standalone full.yaml
	// (each mode refuses the others' fields).
	env := map[string]string{
		"CACHESYNC_MYSQL_ADDR":             "10.0.0.1:3306",
		"CACHESYNC_MYSQL_USER":             "envuser",
		"CACHESYNC_MYSQL_PASSWORD":         "envpass",
		"CACHESYNC_REDIS_ADDR":             "10.0.0.2:6379",
		"CACHESYNC_REDIS_USERNAME":         "envredisuser",
		"CACHESYNC_REDIS_PASSWORD":         "envredispass",
		"CACHESYNC_HTTP_ADDR":              "127.0.0.1:9999",
		"CACHESYNC_ADMIN_ADDR":             "0.0.0.0:9998",
		"CACHESYNC_KAFKA_BROKERS":          "k1:9092,k2:9092",
		"CACHESYNC_KAFKA_USERNAME":         "envkafkauser",
		"CACHESYNC_KAFKA_PASSWORD":         "envkafkapass",
		"CACHESYNC_ADMIN_TOKEN":            "env-admin-token-0123456789abcdefgh",
		"CACHESYNC_MYSQL_SERVER_ID":        "77",
		"CACHESYNC_HA_ID":                  "pod-1",
		"CACHESYNC_SECKILL_MYSQL_USER":     "envsale",
		"CACHESYNC_SECKILL_MYSQL_PASSWORD": "envsalepass",
		"CACHESYNC_JWT_SECRET":             "env-jwt-secret-0123456789abcdefghij",
		"CACHESYNC_GATEWAY_SECRET":         "env-gateway-secret-0123456789abcdef",
	}
	clusterEnv := map[string]string{
		"CACHESYNC_REDIS_ADDRS": "10.0.0.8:7000, 10.0.0.9:7001",
	}
	sentinelEnv := map[string]string{
		"CACHESYNC_REDIS_MASTER_NAME":       "envmaster",
		"CACHESYNC_REDIS_SENTINEL_ADDRS":    "10.0.0.5:26379, 10.0.0.6:26379,10.0.0.7:26379",
		"CACHESYNC_REDIS_SENTINEL_PASSWORD": "envsentinelpass",
	}
	c, err := Load("testdata/good/full.yaml", envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load("testdata/good/sentinel.yaml", envMap(sentinelEnv))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := Load("testdata/good/cluster.yaml", envMap(clusterEnv))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"CACHESYNC_MYSQL_ADDR":              c.MySQL.Addr,
		"CACHESYNC_MYSQL_USER":              c.MySQL.User,
		"CACHESYNC_MYSQL_PASSWORD":          c.MySQL.Password,
		"CACHESYNC_REDIS_ADDR":              c.Redis.Addr,
		"CACHESYNC_REDIS_USERNAME":          c.Redis.Username,
		"CACHESYNC_REDIS_PASSWORD":          c.Redis.Password,
		"CACHESYNC_HTTP_ADDR":               c.HTTP.Addr,
		"CACHESYNC_ADMIN_ADDR":              c.Admin.Addr,
		"CACHESYNC_KAFKA_BROKERS":           strings.Join(c.Seckill.Kafka.Brokers, ","),
		"CACHESYNC_KAFKA_USERNAME":          c.Seckill.Kafka.Username,
		"CACHESYNC_KAFKA_PASSWORD":          c.Seckill.Kafka.Password,
		"CACHESYNC_ADMIN_TOKEN":             c.Seckill.AdminToken,
		"CACHESYNC_MYSQL_SERVER_ID":         strconv.FormatUint(uint64(c.MySQL.ServerID), 10),
		"CACHESYNC_HA_ID":                   c.HA.ID,
		"CACHESYNC_SECKILL_MYSQL_USER":      c.Seckill.Account.User,
		"CACHESYNC_SECKILL_MYSQL_PASSWORD":  c.Seckill.Account.Password,
		"CACHESYNC_JWT_SECRET":              c.Seckill.Auth.JWT.HS256Secret,
		"CACHESYNC_GATEWAY_SECRET":          c.Seckill.Auth.Header.Secret,
		"CACHESYNC_REDIS_MASTER_NAME":       s.Redis.MasterName,
		"CACHESYNC_REDIS_SENTINEL_ADDRS":    strings.Join(s.Redis.SentinelAddrs, ", "),
		"CACHESYNC_REDIS_SENTINEL_PASSWORD": s.Redis.SentinelPassword,
		"CACHESYNC_REDIS_ADDRS":             strings.Join(cl.Redis.Addrs, ", "),
	}
	sentinelEnv["CACHESYNC_REDIS_SENTINEL_ADDRS"] = "10.0.0.5:26379, 10.0.0.6:26379, 10.0.0.7:26379" // spaces trimmed
	all := maps.Clone(env)
	maps.Copy(all, sentinelEnv)
	maps.Copy(all, clusterEnv)
	for k, v := range all {
		if got[k] != v {
			t.Errorf("%s: field is %q, want %q", k, got[k], v)
		}
	}
	// Every documented variable is covered by this test.
	names := EnvNames()
	for _, n := range names {
		if _, ok := all[n]; !ok {
			t.Errorf("EnvNames has %s, which this test does not cover", n)
		}
	}
	if len(names) != len(all) {
		t.Errorf("EnvNames = %v, test covers %d names", names, len(all))
	}
	// The fields not overridden keep the file's values.
	if c.MySQL.Heartbeat == 0 || c.Redis.DB != 3 || c.Log.Level != "debug" {
		t.Errorf("overrides touched other fields: %+v %+v %+v", c.MySQL, c.Redis, c.Log)
	}
	if s.Redis.Mode != "sentinel" || s.Redis.SentinelUsername != "sentinel-user" || s.Redis.Password != "redis-secret" || s.Redis.DB != 2 {
		t.Errorf("overrides touched other fields: %+v", s.Redis)
	}
}

func TestEnvServerIDRefused(t *testing.T) {
	for _, v := range []string{"0", "-1", "4294967296", "abc"} {
		_, err := Load("testdata/good/full.yaml", envMap(map[string]string{"CACHESYNC_MYSQL_SERVER_ID": v}))
		if err == nil || !strings.Contains(err.Error(), "mysql.server_id") || !strings.Contains(err.Error(), "CACHESYNC_MYSQL_SERVER_ID") {
			t.Errorf("CACHESYNC_MYSQL_SERVER_ID=%s: err = %v, want one naming the field and the variable", v, err)
		}
	}
}

func TestEnvOverrideEmptyIsIgnored(t *testing.T) {
	c, err := Load("testdata/good/full.yaml", envMap(map[string]string{
		"CACHESYNC_MYSQL_ADDR":     "",
		"CACHESYNC_REDIS_PASSWORD": "",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MySQL.Addr != "db.internal:3307" || c.Redis.Password != "redis-secret" {
		t.Errorf("empty variables overrode the file: mysql.addr %q, redis.password %q", c.MySQL.Addr, c.Redis.Password)
	}
}

func TestEnvOverrideBeforeDefaultsAndValidation(t *testing.T) {
	// The file's bad address is replaced before validation.
	c, err := Load("testdata/bad/redis_addr_no_port.yaml", envMap(map[string]string{"CACHESYNC_REDIS_ADDR": "127.0.0.1:7000"}))
	if err != nil {
		t.Fatalf("override did not replace the bad file value: %v", err)
	}
	if c.Redis.Addr != "127.0.0.1:7000" {
		t.Errorf("redis.addr = %q", c.Redis.Addr)
	}
	// An override fills a field the file leaves to its default.
	c, err = Load("testdata/good/minimal.yaml", envMap(map[string]string{"CACHESYNC_MYSQL_ADDR": "db:3306"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MySQL.Addr != "db:3306" {
		t.Errorf("mysql.addr = %q", c.MySQL.Addr)
	}
	// A bad value from the environment is reported under the field's name
	// and the variable's, so the reader does not search the file for it.
	_, err = Load("testdata/good/minimal.yaml", envMap(map[string]string{"CACHESYNC_MYSQL_ADDR": "db"}))
	if err == nil {
		t.Fatal("bad CACHESYNC_MYSQL_ADDR accepted")
	}
	for _, s := range []string{"mysql.addr", `"db"`, "CACHESYNC_MYSQL_ADDR"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// A bad value from the environment is reported with the variable's name
// whatever follows the field in the message: a space, a colon or an index.
// (seckill.kafka.brokers, followed by a colon, was not annotated before.)
func TestEnvOverrideBadListNamesVariable(t *testing.T) {
	for _, tc := range []struct {
		file, name, value string
		want              []string
	}{
		{"testdata/good/sentinel.yaml", "CACHESYNC_REDIS_SENTINEL_ADDRS", "s1:26379,s2", []string{"redis.sentinel_addrs[1]", `"s2"`}},
		{"testdata/good/sentinel.yaml", "CACHESYNC_REDIS_SENTINEL_ADDRS", "s1:26379,", []string{"redis.sentinel_addrs[1]", `""`}},
		{"../configs/cachesync.yaml", "CACHESYNC_KAFKA_BROKERS", "k1", []string{"seckill.kafka.brokers", `"k1"`}},
		{"testdata/good/full.yaml", "CACHESYNC_REDIS_MASTER_NAME", "m", []string{"redis.master_name", "only used in sentinel mode"}},
		{"testdata/good/sentinel.yaml", "CACHESYNC_REDIS_ADDR", "10.0.0.2:6379", []string{"redis.addr", "not used in sentinel mode"}},
	} {
		_, err := Load(tc.file, envMap(map[string]string{tc.name: tc.value}))
		if err == nil {
			t.Errorf("%s=%q with %s accepted", tc.name, tc.value, tc.file)
			continue
		}
		for _, s := range append(tc.want, "set by environment variable "+tc.name) {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s=%q: error %q does not contain %q", tc.name, tc.value, err, s)
			}
		}
	}
}

func TestSentinelConfig(t *testing.T) {
	c, err := Load("testdata/good/sentinel.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Redis{
		Mode: "sentinel", MasterName: "cache-main",
		SentinelAddrs:    []string{"s1.internal:26379", "s2.internal:26379", "10.0.0.3:26380"},
		SentinelUsername: "sentinel-user", SentinelPassword: "sentinel-secret",
		Username: "cs", Password: "redis-secret", DB: 2,
	}
	if !reflect.DeepEqual(c.Redis, want) {
		t.Errorf("redis = %+v\nwant    %+v", c.Redis, want)
	}
	// No default address in sentinel mode: it would never be used.
	m, err := Load("testdata/good/sentinel_minimal.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if m.Redis.Addr != "" || m.Redis.DB != 0 {
		t.Errorf("sentinel_minimal: addr %q, db %d; want no address, db 0", m.Redis.Addr, m.Redis.DB)
	}
}

func TestClusterConfig(t *testing.T) {
	yes := true
	c, err := Load("testdata/good/cluster.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Redis{
		Mode:     "cluster",
		Addrs:    []string{"n1.internal:7000", "n2.internal:7001", "10.0.0.3:7002"},
		Username: "cs", Password: "redis-secret",
		TLS: tlsconf.Config{Enabled: &yes, ServerName: "redis.internal"},
	}
	if !reflect.DeepEqual(c.Redis, want) {
		t.Errorf("redis = %+v\nwant    %+v", c.Redis, want)
	}
	// No default address in cluster mode: the seeds are redis.addrs.
	m, err := Load("testdata/good/cluster_minimal.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if m.Redis.Addr != "" || m.Redis.DB != 0 || !slices.Equal(m.Redis.Addrs, []string{"[::1]:7000"}) {
		t.Errorf("cluster_minimal: addr %q, db %d, addrs %q; want no address, db 0, [::1]:7000", m.Redis.Addr, m.Redis.DB, m.Redis.Addrs)
	}
}

func TestParseEmptyAndNilLookup(t *testing.T) {
	if _, err := Parse(nil, nil); err == nil || !strings.Contains(err.Error(), "empty file") {
		t.Errorf("Parse(nil) = %v, want empty file", err)
	}
	data, err := os.ReadFile("testdata/good/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(data, nil); err != nil {
		t.Errorf("Parse with nil lookup: %v", err)
	}
}

// The demo configuration shipped in the repository loads.
func TestRepoDemoConfig(t *testing.T) {
	// The buyers' JWT secret is not in the file either: without
	// CACHESYNC_JWT_SECRET it does not load, and says what to set.
	if _, err := Load(filepath.Join("..", "configs", "cachesync.yaml"), noEnv); err == nil || !strings.Contains(err.Error(), "CACHESYNC_JWT_SECRET") {
		t.Errorf("demo config without CACHESYNC_JWT_SECRET: %v, want an error naming it", err)
	}
	jwtEnv := map[string]string{"CACHESYNC_JWT_SECRET": strings.Repeat("j", 32)}
	c, err := Load(filepath.Join("..", "configs", "cachesync.yaml"), envMap(jwtEnv))
	if err != nil {
		t.Fatal(err)
	}
	if c.Seckill.Auth.Mode != "jwt" || *c.Seckill.Limits.PerIP == 0 {
		t.Errorf("demo config: auth %q, per_ip %v; want jwt and a per-IP limit", c.Seckill.Auth.Mode, *c.Seckill.Limits.PerIP)
	}
	if len(c.Sink.Rules) == 0 || c.MySQL.Start.From != "checkpoint" {
		t.Errorf("unexpected demo config: %+v", c)
	}
	// The file is baked into the image: no token in it (the demo passes
	// one in CACHESYNC_ADMIN_TOKEN), and the admin listener on loopback.
	if c.Seckill.AdminToken != "" || c.Admin.Addr != "127.0.0.1:9091" {
		t.Errorf("demo config: admin token %q, admin.addr %q; want none and 127.0.0.1:9091", c.Seckill.AdminToken, c.Admin.Addr)
	}
	// make run passes the dev ports through the environment.
	c, err = Load(filepath.Join("..", "configs", "cachesync.yaml"), envMap(map[string]string{
		"CACHESYNC_MYSQL_ADDR": "127.0.0.1:1", "CACHESYNC_REDIS_ADDR": "127.0.0.1:2", "CACHESYNC_JWT_SECRET": jwtEnv["CACHESYNC_JWT_SECRET"],
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MySQL.Addr != "127.0.0.1:1" || c.Redis.Addr != "127.0.0.1:2" {
		t.Errorf("overrides not applied to the demo config: %q %q", c.MySQL.Addr, c.Redis.Addr)
	}
}

// checkBadFiles loads every file of dir, each of which must fail to load
// with an error naming the file and containing every string want lists
// for it; every file must be in want and every name in want a file. It
// returns the number of files.
func checkBadFiles(t *testing.T, dir string, want map[string][]string) int {
	t.Helper()
	files, err := filepath.Glob(dir + "/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := filepath.Base(f)
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			subs, ok := want[name]
			if !ok {
				t.Fatalf("no expected error for %s: add it to the table", name)
			}
			c, err := Load(f, noEnv)
			if err == nil {
				t.Fatalf("Load succeeded, want an error containing %q; got %+v", subs, c)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, f) {
				t.Errorf("error %q does not name the file %s", msg, f)
			}
			for _, s := range subs {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not contain %q", msg, s)
				}
			}
		})
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("table names %s, which is not in %s", name, dir)
		}
	}
	return len(files)
}

func TestRuntimeFollowsBudgets(t *testing.T) {
	c, err := Parse([]byte("mysql: {read_ahead_bytes: 134217728}\nsink: {rules: [{table: shop.goods, kind: invalidate, keys: [\"goods:{id}\"]}]}\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(2*(128+8)+112) << 20; c.Runtime.MemoryLimit != want {
		t.Errorf("runtime.memory_limit = %d, want %d (2 × (read_ahead_bytes + max_txn_bytes) + 112 MiB)", c.Runtime.MemoryLimit, want)
	}
}
