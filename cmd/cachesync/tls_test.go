package main

// TestDaemonTLS runs the daemon binary with MySQL, Redis and Kafka all
// over mutual TLS, against servers that refuse plaintext: MariaDB with
// --require-secure-transport, redis-server with only a --tls-port that
// requires client certificates, kfake with a TLS listener that requires
// them too; its own listeners serve HTTPS (the admin one requiring client
// certificates). A row reaches Redis through the binlog, and a
// reservation goes through the HTTPS API, Kafka, the consumer's MySQL
// transaction and CDC back to Redis. `cachesync validate` with a wrong CA
// fails within seconds, naming the server.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/redis/go-redis/v9"
)

// tlsTestJWTSecret signs TestDaemonTLS's buyer token.
const tlsTestJWTSecret = "tls-test-jwt-secret-0123456789abcdef"

func TestDaemonTLS(t *testing.T) {
	bin := testenv.BuildCachesync(t)
	f := testenv.MakeTLSFiles(t)
	my := testenv.StartMariaDB(t, testenv.MariaDBTLS(f))
	rs := testenv.StartRedisTLS(t, f, "--tls-auth-clients", "yes")
	ksc, err := f.ServerConfig(tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	k := testenv.StartKafka(t, testenv.KafkaTLS(ksc), testenv.KafkaTopic("cachesync.orders", 2), testenv.KafkaTopic("cachesync.orders.dlq", 1))
	db := my.DB(t, "shop")
	schema, err := os.ReadFile("../../seckill/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range strings.Split(string(schema), ";\n") {
		if strings.Contains(stmt, "CREATE") {
			mustExec(t, db, stmt)
		}
	}
	mustExec(t, db, "CREATE TABLE goods (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
	ctc, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), TLSConfig: ctc})
	t.Cleanup(func() { rdb.Close() })

	dir := t.TempDir()
	write := func(name, mysqlCA, redisCA string) string {
		tlsBlock := func(ca string) string {
			return fmt.Sprintf("{ca: %s, cert: %s, key: %s}", ca, f.ClientCert, f.ClientKey)
		}
		path := filepath.Join(dir, name)
		cfg := fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
  tls: %s
redis:
  addr: %s
  tls: %s
http:
  addr: 127.0.0.1:0
  tls: {cert: %s, key: %s}
admin:
  addr: 127.0.0.1:0
  tls: {cert: %[6]s, key: %[7]s, client_ca: %[8]s}
log:
  level: info
sink:
  rules:
    - {table: shop.goods, kind: rewrite, key: "goods:{id}", format: json}
    - {table: shop.sk_items, kind: mirror, key: "sk:{{{id}}}:stock", column: stock}
    - {table: shop.sk_items, kind: member, key: "sk:items", member: "{id}"}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:pending", member: "{order_id}:{user_id}"}
    - {table: shop.sk_orders, kind: member, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [created, paid]}}
seckill:
  enabled: true
  auth: {mode: jwt, jwt: {hs256_secret: %s}}
  kafka:
    brokers: [%s]
    session_timeout: 1s
    tls: %s
  produce_timeout: 2s
`, my.Addr(), 1000+rand.N(1<<30), tlsBlock(mysqlCA), rs.Addr(), tlsBlock(redisCA), f.ServerCert, f.ServerKey, f.CA,
			tlsTestJWTSecret, strings.Join(k.Brokers(), ","), tlsBlock(f.CA))
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("cachesync.yaml", f.CA, f.CA)

	// validate with a wrong CA: fails at once, naming the server.
	for _, tc := range []struct {
		name, cfg, want string
	}{
		{"mysql", write("wrong-mysql-ca.yaml", f.OtherCA, f.CA), "mysql " + my.Addr()},
		{"redis", write("wrong-redis-ca.yaml", f.CA, f.OtherCA), "redis " + rs.Addr()},
	} {
		t0 := time.Now()
		out, err := exec.Command(bin, "validate", "-config", tc.cfg).CombinedOutput()
		if err == nil {
			t.Errorf("validate with the wrong %s CA succeeded:\n%s", tc.name, out)
			continue
		}
		for _, want := range []string{tc.want, "certificate signed by unknown authority"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("validate with the wrong %s CA: %s\nwant it to contain %q", tc.name, out, want)
			}
		}
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("validate with the wrong %s CA took %s", tc.name, d)
		}
	}
	if out, err := exec.Command(bin, "validate", "-config", good).CombinedOutput(); err != nil {
		t.Fatalf("validate over TLS: %v\n%s", err, out)
	}

	d := &testenv.Child{Bin: bin, Config: good, Dir: dir}
	t.Cleanup(d.KillCurrent)
	r := d.Start(t)
	ctx := context.Background()
	if err := waitUntil(60*time.Second, func() bool { return (r.LogHas(`"seckill started"`) && listenAddr(r, "http") != "") || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("the daemon did not start over TLS (%v)%s", err, r.Tail())
	}

	if l := r.Grep(`"flavor":`); !strings.Contains(l, `"tls":true`) {
		t.Errorf("mysql's connected line does not say tls: %s", l)
	}
	if l := r.Grep(`"seckill started"`); !strings.Contains(l, `"kafka_tls":true`) {
		t.Errorf("seckill's started line does not say kafka_tls: %s", l)
	}

	// Binlog over TLS -> Redis over TLS.
	mustExec(t, db, "INSERT INTO goods VALUES (1, 'over tls')")
	mustExec(t, db, "INSERT INTO sk_items (id, name, stock) VALUES (1, 'item', 5)")
	if err := waitUntil(30*time.Second, func() bool {
		return rdb.Get(ctx, "goods:1").Val() == `{"id":1,"name":"over tls"}` && rdb.Get(ctx, "sk:{1}:stock").Val() == "5" &&
			rdb.Exists(ctx, "sk:{1}:ready").Val() == 1
	}); err != nil {
		t.Fatalf("rows did not reach Redis: goods:1 %q, sk:{1}:stock %q%s", rdb.Get(ctx, "goods:1").Val(), rdb.Get(ctx, "sk:{1}:stock").Val(), r.Tail())
	}

	// HTTPS -> Kafka over TLS -> consumer -> MySQL over TLS -> binlog -> Redis.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: ctc}}
	defer hc.CloseIdleConnections()
	tok, err := auth.Mint(auth.JWT{HS256Secret: tlsTestJWTSecret}, 42, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "https://"+listenAddr(r, "http")+"/seckill/items/1/reservations", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("reservation: %d, want 202%s", resp.StatusCode, r.Tail())
	}
	if err := waitUntil(30*time.Second, func() bool {
		var stock, orders int
		_ = db.QueryRow("SELECT stock, (SELECT COUNT(*) FROM sk_orders WHERE user_id = 42 AND status = 'created') FROM sk_items WHERE id = 1").Scan(&stock, &orders)
		return stock == 4 && orders == 1 && rdb.Get(ctx, "sk:{1}:stock").Val() == "4" && rdb.SCard(ctx, "sk:{1}:pending").Val() == 0
	}); err != nil {
		t.Fatalf("the order did not go through Kafka and MySQL back to Redis: sk:{1}:stock %q%s", rdb.Get(ctx, "sk:{1}:stock").Val(), r.Tail())
	}
	// The admin listener: HTTPS with the operators' client certificate.
	if err := waitUntil(10*time.Second, func() bool {
		resp, err := hc.Get("https://" + listenAddr(r, "admin") + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		t.Errorf("admin /readyz over HTTPS: not 200 within 10s")
	}
	r.Term(t, termWithin)
	d.CheckLogs(t)
}

// TestDaemonClusterTLS runs the daemon binary with redis.mode cluster on a
// Redis Cluster (3 masters, 3 replicas) whose nodes speak only TLS and
// require client certificates; redis.addrs names one node, so the daemon
// dials the others at the addresses the cluster reports (127.0.0.1 and
// their TLS ports), checked against the certificate's IP. A row reaches
// the cluster through the binlog; GET /goods/1 is served from L1, and
// after an UPDATE the invalidation message (received by the daemon's own
// subscriber and by the test's) drops it from L1.
func TestDaemonClusterTLS(t *testing.T) {
	t0 := time.Now()
	bin := testenv.BuildCachesync(t)
	f := testenv.MakeTLSFiles(t)
	my := testenv.StartMariaDB(t)
	c := testenv.StartRedisCluster(t, testenv.ClusterTLS(f), testenv.ClusterArgs("--tls-auth-clients", "yes"))
	db := my.DB(t, "shop")
	mustExec(t, db, "CREATE TABLE goods (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
	ctc, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), TLSConfig: ctc})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	// The test's own subscriber, before the daemon publishes anything.
	ps := rdb.Subscribe(ctx, "cachesync:invalidations:main")
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE over TLS: %v", err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "cachesync.yaml")
	cfg := fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
redis:
  mode: cluster
  addrs: [%s]
  tls: {ca: %s, cert: %s, key: %s}
http:
  addr: 127.0.0.1:0
admin:
  addr: 127.0.0.1:0
log:
  level: info
sink:
  rules:
    - {table: shop.goods, kind: invalidate, keys: ["goods:{id}"]}
    - {table: shop.goods, kind: rewrite, key: "goods:json:{id}", format: json}
goods:
  table: shop.goods
  id_column: id
  key_prefix: "goods:"
`, my.Addr(), 1000+rand.N(1<<30), c.Addrs()[0], f.CA, f.ClientCert, f.ClientKey)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &testenv.Child{Bin: bin, Config: path, Dir: dir}
	t.Cleanup(d.KillCurrent)
	t.Logf("set-up %s", time.Since(t0).Round(time.Millisecond))
	t1 := time.Now()
	r := d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return listenAddr(r, "http") != "" || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("the daemon did not start on the TLS cluster (%v)%s", err, r.Tail())
	}

	// Binlog -> pipeline -> the cluster over TLS.
	mustExec(t, db, "INSERT INTO goods VALUES (1, 'v1')")
	if err := waitUntil(30*time.Second, func() bool { return rdb.Get(ctx, "goods:json:1").Val() == `{"id":1,"name":"v1"}` }); err != nil {
		t.Fatalf("the row did not reach the cluster: goods:json:1 %q%s", rdb.Get(ctx, "goods:json:1").Val(), r.Tail())
	}
	t.Logf("start -> row applied on the cluster: %s", time.Since(t1).Round(time.Millisecond))
	hc := &http.Client{Timeout: 10 * time.Second}
	get := func() (body, src string) {
		resp, err := hc.Get("http://" + listenAddr(r, "http") + "/goods/1")
		if err != nil {
			return err.Error(), ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.Header.Get("X-Cache")
	}
	// Once the daemon's subscriber is live, the second read is from L1.
	if err := waitUntil(30*time.Second, func() bool { b, src := get(); return strings.Contains(b, "v1") && src == "L1" }); err != nil {
		b, src := get()
		t.Fatalf("GET /goods/1 not served from L1: %q, X-Cache %q%s", b, src, r.Tail())
	}
	before, _ := metric(r, "cachesync_cache_l1_invalidations_total")

	mustExec(t, db, "UPDATE goods SET name = 'v2' WHERE id = 1")
	t2 := time.Now()
	// The test's subscriber: the INSERT's message, then the UPDATE's.
	for i, want := range []string{`{"seq":1,"keys":["goods:1","goods:json:1"]}`, `{"seq":2,"keys":["goods:1","goods:json:1"]}`} {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		m, err := ps.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			t.Fatalf("invalidation message %d on the TLS cluster: %v%s", i+1, err, r.Tail())
		}
		if m.Payload != want {
			t.Fatalf("invalidation message %d: %s, want %s", i+1, m.Payload, want)
		}
	}
	t.Logf("UPDATE -> its invalidation message received: %s", time.Since(t2).Round(time.Millisecond))
	if err := waitUntil(10*time.Second, func() bool {
		v, _ := metric(r, "cachesync_cache_l1_invalidations_total")
		return v > before
	}); err != nil {
		t.Fatalf("the daemon's L1 subscriber received no invalidation: cachesync_cache_l1_invalidations_total stayed %v%s", before, r.Tail())
	}
	if b, src := get(); !strings.Contains(b, "v2") || src == "L1" {
		t.Errorf("GET /goods/1 after the invalidation: %q, X-Cache %q; want v2, not from L1", b, src)
	}
	if v, _ := metric(r, `cachesync_cache_l1_flushes_total{reason="disconnected"}`); v != 0 {
		t.Errorf("the daemon's subscriber was disconnected %v times", v)
	}
	r.Term(t, termWithin)
	// No error in the log: the sink loads its scripts on every master
	// before the first batch (a new cluster's masters have none).
	b, err := os.ReadFile(r.Log)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, `"level":"error"`) || strings.Contains(line, `"level":"fatal"`) ||
			strings.Contains(line, "DATA RACE") || strings.HasPrefix(line, "panic:") {
			t.Errorf("%s: %s", r.Log, line)
		}
	}
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
}
