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
