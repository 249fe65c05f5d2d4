package daemon

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/seckill"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// The SQL pools (OpenMySQL's and the sale's OpenDB) over TLS, against a
// MariaDB that refuses plaintext; with a client certificate for a user
// that REQUIREs one (X509); a wrong CA fails at once, naming the address.
func TestMySQLTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	m := testenv.StartMariaDB(t, testenv.MariaDBTLS(f))
	admin := m.DB(t, "")
	for _, q := range []string{
		"CREATE USER cert@'%' REQUIRE X509",
		"GRANT ALL ON *.* TO cert@'%'",
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	cfg := func(user string, tc tlsconf.Config) binlog.Config {
		c := binlog.Config{Addr: m.Addr(), User: user, TLS: tc}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	mutual := tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		cfg  binlog.Config
	}{
		{"server verified", cfg("root", tlsconf.Config{CA: f.CA})},
		{"mutual, user requires X509", cfg("cert", mutual)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, info, err := OpenMySQL(ctx, tc.cfg)
			if err != nil {
				t.Fatalf("OpenMySQL: %v", err)
			}
			defer db.Close()
			if info.Flavor != "mariadb" {
				t.Errorf("flavor %q", info.Flavor)
			}
			var name, cipher string
			if err := db.QueryRow("SHOW SESSION STATUS LIKE 'Ssl_cipher'").Scan(&name, &cipher); err != nil || cipher == "" {
				t.Errorf("OpenMySQL's connection: Ssl_cipher %q, %v; want a cipher", cipher, err)
			}
			sdb, err := seckill.OpenDB(ctx, tc.cfg)
			if err != nil {
				t.Fatalf("seckill.OpenDB: %v", err)
			}
			defer sdb.Close()
			if err := sdb.QueryRow("SHOW SESSION STATUS LIKE 'Ssl_cipher'").Scan(&name, &cipher); err != nil || cipher == "" {
				t.Errorf("OpenDB's connection: Ssl_cipher %q, %v; want a cipher", cipher, err)
			}
		})
	}

	// Refused: plaintext (MariaDB answers 1045), and the X509 user
	// without its certificate. OpenMySQL retries those until ctx ends.
	for _, tc := range []struct {
		name string
		cfg  binlog.Config
	}{
		{"plaintext", cfg("root", tlsconf.Config{})},
		{"no client certificate", cfg("cert", tlsconf.Config{CA: f.CA})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			db, _, err := OpenMySQL(ctx, tc.cfg)
			if err == nil {
				db.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), "1045") {
				t.Errorf("OpenMySQL: %v, want error 1045", err)
			}
		})
	}

	t.Run("wrong CA", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		t0 := time.Now()
		db, _, err := OpenMySQL(ctx, cfg("root", tlsconf.Config{CA: f.OtherCA}))
		if err == nil {
			db.Close()
			t.Fatal("connected with the wrong CA")
		}
		for _, want := range []string{"mysql " + m.Addr(), "certificate signed by unknown authority"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("OpenMySQL: %v\nwant it to contain %q", err, want)
			}
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("OpenMySQL took %s to give up on a certificate no retry cures", d)
		}
		sdb, err := seckill.OpenDB(ctx, cfg("root", tlsconf.Config{CA: f.OtherCA}))
		if err == nil {
			sdb.Close()
			t.Fatal("seckill.OpenDB connected with the wrong CA")
		}
		if !strings.Contains(err.Error(), "mysql "+m.Addr()) || !strings.Contains(err.Error(), "unknown authority") {
			t.Errorf("seckill.OpenDB: %v", err)
		}
	})
}

// The Redis client over TLS against a redis-server that speaks only TLS
// and requires client certificates.
func TestRedisTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	r := testenv.StartRedisTLS(t, f, "--tls-auth-clients", "yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := func(tc tlsconf.Config) error {
		cfg := config.Redis{Addr: r.Addr(), TLS: tc}
		cfg.SetDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		rdb := NewRedisClient(cfg)
		defer rdb.Close()
		if err := rdb.Set(ctx, "k", "over tls", 0).Err(); err != nil {
			return err
		}
		if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "over tls" {
			t.Errorf("GET k: %q, %v", v, err)
		}
		return nil
	}
	if err := client(tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}); err != nil {
		t.Fatalf("mutual TLS: %v", err)
	}
	for _, tc := range []struct {
		name string
		tls  tlsconf.Config
		want string
	}{
		{"plaintext", tlsconf.Config{}, ""}, // the TLS port closes it: EOF
		{"no client certificate", tlsconf.Config{CA: f.CA}, "certificate required"},
		{"wrong CA", tlsconf.Config{CA: f.OtherCA, Cert: f.ClientCert, Key: f.ClientKey}, "certificate signed by unknown authority"},
	} {
		err := client(tc.tls)
		if err == nil {
			t.Errorf("%s: connected", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant it to contain %q", tc.name, err, tc.want)
		}
		if tc.name == "wrong CA" && !strings.Contains(err.Error(), "redis "+r.Addr()) {
			t.Errorf("%s: %v\nwant it to name redis %s", tc.name, err, r.Addr())
		}
	}
}

// Sentinel mode over TLS: the Sentinels and both nodes speak only TLS;
// the failover client asks the Sentinels and writes to the master over
// TLS, and follows a failover. Plaintext, or the wrong CA, reaches
// nothing, and the error names a Sentinel's address.
func TestRedisSentinelTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	s := testenv.StartSentinel(t, testenv.SentinelTLS(f))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := func(tc tlsconf.Config) config.Redis {
		c := config.Redis{Mode: config.RedisSentinel, MasterName: s.MasterName(), SentinelAddrs: s.SentinelAddrs(), TLS: tc}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	rdb := NewRedisClient(cfg(tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}))
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "v1", 0).Err(); err != nil {
		t.Fatalf("SET through the Sentinels over TLS: %v", err)
	}
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	next, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := testenv.WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		if err := rdb.Set(ctx, "k", "v2", 0).Err(); err != nil {
			return err
		}
		ci, err := rdb.ClientInfo(ctx).Result()
		if err != nil {
			return err
		}
		if ci.LAddr != next.Addr() {
			return fmt.Errorf("connected to %s, not the new master %s", ci.LAddr, next.Addr())
		}
		return nil
	}); err != nil {
		t.Fatalf("after the failover: %v", err)
	}

	for _, tc := range []struct {
		name string
		tls  tlsconf.Config
		want string
	}{
		{"plaintext", tlsconf.Config{}, ""},
		{"wrong CA", tlsconf.Config{CA: f.OtherCA}, "certificate signed by unknown authority"},
	} {
		c := NewRedisClient(cfg(tc.tls))
		err := c.Ping(ctx).Err()
		c.Close()
		if err == nil {
			t.Errorf("%s: PING answered", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant it to contain %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// Cluster mode over TLS: the six nodes of a Redis Cluster speak only TLS
// and require client certificates. From one seed, the cluster client
// reaches the three masters at the addresses the cluster reports
// (127.0.0.1 and their TLS ports), each certificate checked against that
// IP, or against server_name when it is set. A wrong CA, a wrong
// server_name, a missing client certificate or plaintext reach nothing,
// and the error names the seed.
func TestRedisClusterTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	c := testenv.StartRedisCluster(t, testenv.ClusterTLS(f), testenv.ClusterArgs("--tls-auth-clients", "yes"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seed := c.Addrs()[0]
	cfg := func(tc tlsconf.Config) config.Redis {
		cr := config.Redis{Mode: config.RedisCluster, Addrs: []string{seed}, TLS: tc}
		cr.SetDefaults()
		if err := cr.Validate(); err != nil {
			t.Fatal(err)
		}
		return cr
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mutual := tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}
	byName := mutual
	byName.ServerName = "localhost"
	for name, tc := range map[string]tlsconf.Config{"IP of each node": mutual, "server_name localhost": byName} {
		rdb := NewRedisClient(cfg(tc))
		used := map[string]bool{}
		for i := range 30 {
			key := fmt.Sprintf("k%d", i)
			if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
				t.Fatalf("%s: SET %s: %v", name, key, err)
			}
			mc, err := rdb.(*redis.ClusterClient).MasterForKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			used[mc.Options().Addr] = true
		}
		for _, m := range masters {
			if !used[m.Addr()] {
				t.Errorf("%s: no key went to the master %s (used %v)", name, m.Addr(), used)
			}
		}
		rdb.Close()
	}

	for _, tc := range []struct {
		name string
		tls  tlsconf.Config
		want string
	}{
		{"plaintext", tlsconf.Config{}, ""},
		{"no client certificate", tlsconf.Config{CA: f.CA}, "certificate required"},
		{"wrong CA", tlsconf.Config{CA: f.OtherCA, Cert: f.ClientCert, Key: f.ClientKey}, "certificate signed by unknown authority"},
		{"wrong server_name", tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey, ServerName: "redis.example"}, "not redis.example"},
	} {
		rdb := NewRedisClient(cfg(tc.tls))
		err := rdb.Set(ctx, "k", "v", 0).Err()
		rdb.Close()
		if err == nil {
			t.Errorf("%s: SET answered", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\nwant it to contain %q", tc.name, err, tc.want)
		}
		if tc.name != "plaintext" && tc.name != "no client certificate" && !strings.Contains(err.Error(), "redis "+seed) {
			t.Errorf("%s: %v\nwant it to name redis %s", tc.name, err, seed)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// insecure_skip_verify is allowed but logged, once per connection kind
// that uses it (the sale's Kafka only when the sale is on).
func TestWarnInsecureTLS(t *testing.T) {
	on := func(b bool) *bool { return &b }
	cfg := &config.Config{}
	cfg.Redis.TLS = tlsconf.Config{InsecureSkipVerify: true}
	cfg.MySQL.TLS = tlsconf.Config{Enabled: on(true)}
	cfg.Seckill.Kafka.TLS = tlsconf.Config{InsecureSkipVerify: true}
	var buf bytes.Buffer
	warnInsecureTLS(cfg, zerolog.New(&buf))
	if got := strings.Count(buf.String(), "\n"); got != 1 || !strings.Contains(buf.String(), `"field":"redis.tls.insecure_skip_verify"`) {
		t.Errorf("sale off: %d lines:\n%s", got, buf.String())
	}
	buf.Reset()
	cfg.Seckill.Enabled = true
	warnInsecureTLS(cfg, zerolog.New(&buf))
	if got := strings.Count(buf.String(), "\n"); got != 2 || !strings.Contains(buf.String(), `"field":"seckill.kafka.tls.insecure_skip_verify"`) {
		t.Errorf("sale on: %d lines:\n%s", got, buf.String())
	}
}
