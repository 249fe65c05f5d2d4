package seckill_test

import (
	"bytes"
	"context"
	"database/sql"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

//go:embed schema.sql
var schemaSQL string

// SaleRules are the CDC rules the sale needs (also in configs/cachesync.yaml).
const saleRules = `
    - {table: shop.sk_items, kind: mirror, key: "sk:{{{id}}}:stock", column: stock}
    - {table: shop.sk_items, kind: member, key: "sk:items", member: "{id}"}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:pending", member: "{order_id}:{user_id}"}
    - {table: shop.sk_orders, kind: member, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [created, paid]}}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [canceled, failed]}}
`

// logTo sends a daemon's log, from level up, to buf.
func logTo(buf *testenv.LogBuffer, level zerolog.Level) fx.Option {
	return fx.Decorate(func(zerolog.Logger) zerolog.Logger { return zerolog.New(buf).Level(level) })
}

// stack is a private MariaDB, Redis and Kafka-protocol broker with the
// sale's schema; daemons are started on it in process or as children.
type stack struct {
	t     *testing.T
	my    *testenv.MariaDB
	rs    *testenv.Redis // nil on a cluster (redisCluster)
	kafka *kfake.Cluster
	db    *sql.DB
	rdb   redis.UniversalClient
	ks    keyspace.Keyspace // the daemons' own keys (default sink settings)
	seq   atomic.Int32
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{t: t, my: testenv.StartMariaDB(t)}
	if redisCluster == nil {
		s.rs = testenv.StartRedis(t)
	}
	var err error
	s.kafka, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(8, "cachesync.orders"), kfake.SeedTopics(1, "cachesync.orders.dlq"),
		kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kafka.Close)
	s.db = s.my.DB(t, "shop")
	for _, stmt := range strings.Split(schemaSQL, ";\n") {
		if strings.TrimSpace(stripComments(stmt)) == "" {
			continue
		}
		if _, err := s.db.Exec(stmt); err != nil {
			t.Fatalf("schema: %v\n%s", err, stmt)
		}
	}
	if redisCluster != nil {
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: redisCluster.Addrs(), ClusterStateReloadInterval: time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() }); err != nil {
			t.Fatalf("flush the cluster: %v", err)
		}
		s.rdb = cc
		s.ks = keyspace.Keyspace{Prefix: "cachesync:", Source: "main", Cluster: true}
	} else {
		s.rdb = redis.NewClient(&redis.Options{Addr: s.rs.Addr()})
		s.ks = keyspace.Keyspace{Prefix: "cachesync:"}
	}
	t.Cleanup(func() { s.rdb.Close() })
	return s
}

// stopRedis stops the stack's Redis: on a cluster every node, started
// again (empty) and healthy when the test ends, for the next test.
func (s *stack) stopRedis() {
	s.t.Helper()
	if redisCluster == nil {
		if err := s.rs.Stop(); err != nil {
			s.t.Fatal(err)
		}
		return
	}
	nodes := redisCluster.Nodes()
	s.t.Cleanup(func() {
		for _, n := range nodes {
			if err := n.Start(); err != nil {
				s.t.Errorf("start cluster node %s again: %v", n.Addr(), err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := redisCluster.WaitHealthy(ctx); err != nil {
			s.t.Errorf("cluster after the restart: %v", err)
		}
	})
	for _, n := range nodes {
		if err := n.Stop(); err != nil {
			s.t.Fatal(err)
		}
	}
}

// loseRedisData kills the stack's Redis, every node of a cluster, and
// starts it again empty after down; a cluster keeps its nodes.conf, so
// it comes back with the same slots, and it is healthy on return.
func (s *stack) loseRedisData(down time.Duration) {
	s.t.Helper()
	nodes := []*testenv.Redis{s.rs}
	if redisCluster != nil {
		nodes = redisCluster.Nodes()
	}
	for _, n := range nodes {
		if err := n.Kill(); err != nil {
			s.t.Fatal(err)
		}
	}
	time.Sleep(down)
	for _, n := range nodes {
		if err := n.Start(); err != nil {
			s.t.Fatal(err)
		}
	}
	if redisCluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := redisCluster.WaitHealthy(ctx); err != nil {
			s.t.Fatalf("cluster after losing its data: %v", err)
		}
	}
}

// redisYAML is the redis section's body for the stack's Redis.
func (s *stack) redisYAML() string {
	if redisCluster != nil {
		return "mode: cluster\n  addrs: [" + strings.Join(redisCluster.Addrs(), ", ") + "]"
	}
	return "addr: " + s.rs.Addr()
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// exec runs a statement or fails the test.
func (s *stack) exec(q string, args ...any) sql.Result {
	s.t.Helper()
	r, err := s.db.Exec(q, args...)
	if err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	return r
}

func (s *stack) int(q string, args ...any) int64 {
	s.t.Helper()
	var n int64
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// adminToken is the tests' admin token (32 bytes at least, as validation
// requires).
const adminToken = "test-admin-token-0123456789abcdef"

// testJWTSecret signs the buyers' tokens of the tests (token).
const testJWTSecret = "test-jwt-secret-0123456789abcdef"

// token is a valid bearer token for user under the tests' configuration.
func token(user int64) string {
	t, err := auth.Mint(auth.JWT{HS256Secret: testJWTSecret}, user, time.Hour, time.Now())
	if err != nil {
		panic(err)
	}
	return t
}

// asUser are the headers that authenticate a request as user (for call).
func asUser(user int64) []string { return []string{"Authorization", "Bearer " + token(user)} }

// configYAML is a daemon configuration for this stack, its listeners on
// the given ports (0: any free port); extra is appended under the seckill
// section. Unless extra has its own, buyers are authenticated with JWTs
// signed with testJWTSecret, the per-IP limit is off (every test client is
// 127.0.0.1) and produce_timeout is 1s.
func (s *stack) configYAML(httpPort, adminPort int, seckillExtra string) string {
	if !strings.Contains(seckillExtra, "auth:") {
		seckillExtra += "\nauth: {mode: jwt, jwt: {hs256_secret: " + testJWTSecret + "}}"
	}
	if !strings.Contains(seckillExtra, "limits:") {
		seckillExtra += "\nlimits: {per_ip: 0}"
	}
	produce := "produce_timeout: 1s\n  "
	if strings.Contains(seckillExtra, "produce_timeout:") {
		produce = ""
	}
	return fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
redis:
  %s
http:
  addr: 127.0.0.1:%d
admin:
  addr: 127.0.0.1:%d
log:
  level: warn
sink:
  rules:%s
seckill:
  enabled: true
  kafka:
    brokers: [%s]
    session_timeout: 1s
  %sjob_interval: 200ms
  retry: {attempts: 3, initial: 20ms, max: 200ms}
%s`, s.my.Addr(), 5000+s.seq.Add(1), s.redisYAML(), httpPort, adminPort, saleRules, strings.Join(s.kafka.ListenAddrs(), ","), produce, indent(seckillExtra))
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l != "" {
			b.WriteString("  " + l + "\n")
		}
	}
	return b.String()
}

// node is an in-process cachesync.
type node struct {
	app   *fx.App
	base  string // the public listener, http://ADDR
	admin string // the admin listener, http://ADDR
	cfg   *config.Config
}

// start runs a daemon in process until the test ends (or stop).
func (s *stack) start(seckillExtra string) *node {
	s.t.Helper()
	return s.startWith(seckillExtra)
}

// startWith is start with more fx options (a decorated logger, say).
func (s *stack) startWith(seckillExtra string, opts ...fx.Option) *node {
	s.t.Helper()
	return s.startYAML(s.configYAML(0, 0, seckillExtra), opts...)
}

// startYAML runs a daemon in process with a whole configuration.
func (s *stack) startYAML(yaml string, opts ...fx.Option) *node {
	s.t.Helper()
	cfg, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	var srv *api.Server
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }), daemon.Options(cfg), fx.Populate(&srv), fx.Options(opts...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		s.t.Fatalf("daemon start: %v", err)
	}
	d := &node{app: app, base: "http://" + srv.PublicAddr().String(), admin: "http://" + srv.AdminAddr().String(), cfg: cfg}
	s.t.Cleanup(d.stop)
	return d
}

func (d *node) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = d.app.Stop(ctx)
}

// addItem creates an item and waits until its keys are ready in Redis.
func (s *stack) addItem(id, stock int64) {
	s.t.Helper()
	s.exec("INSERT INTO sk_items (id, name, stock) VALUES (?, ?, ?)", id, fmt.Sprintf("item %d", id), stock)
	s.eventually(30*time.Second, fmt.Sprintf("item %d ready with stock %d", id, stock), func() bool {
		v, err := s.rdb.Get(context.Background(), fmt.Sprintf("sk:{%d}:stock", id)).Int64()
		n, _ := s.rdb.Exists(context.Background(), fmt.Sprintf("sk:{%d}:ready", id)).Result()
		return err == nil && v == stock && n == 1
	})
}

// eventually polls cond until it holds or the timeout fails the test.
func (s *stack) eventually(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reply is an HTTP answer.
type reply struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}

// call sends a request; a body goes as application/json unless hdr sets
// another Content-Type.
func call(method, url, body string, hdr ...string) (reply, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	_ = json.NewDecoder(bytes.NewReader(raw)).Decode(&r.Body)
	return r, nil
}

// reserve reserves item as user (authenticated by a token).
func (d *node) reserve(item, user int64) (reply, error) {
	return reserveAt(d.base, item, user)
}

func reserveAt(base string, item, user int64) (reply, error) {
	return call("POST", fmt.Sprintf("%s/seckill/items/%d/reservations", base, item), "", asUser(user)...)
}

// getOrder reads an order as user.
func (d *node) getOrder(user int64, order string) (reply, error) {
	return call("GET", d.base+"/orders/"+order, "", asUser(user)...)
}

// pay pays an order as user.
func (d *node) pay(user int64, order string) (reply, error) {
	return call("POST", d.base+"/orders/"+order+"/pay", "", asUser(user)...)
}
