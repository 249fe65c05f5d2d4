package seckill_test

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/seckill"
	"github.com/rs/zerolog"
)

// driftKit is what `cachesync check` and `cachesync resync` build, made
// from a running daemon's configuration: its own MySQL pool, a Checker and
// a Rebuilder on the stack's Redis.
type driftKit struct {
	s   *stack
	d   *node
	db  *sql.DB // the sale's pool (no default database)
	ck  *seckill.Checker
	rb  *seckill.Rebuilder
	cfg seckill.Config
}

func newDriftKit(t *testing.T, s *stack, d *node) *driftKit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := seckill.OpenDB(ctx, d.cfg.MySQL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store := seckill.NewStore(db, d.cfg.Seckill.Database)
	ks := d.cfg.Sink.Keyspace()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Str("component", "drift-test").Logger()
	rb, err := seckill.NewRebuilder(d.cfg.Seckill, ks, d.cfg.Sink.Channel, s.rdb, db, store, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rb.Close() })
	ck := seckill.NewChecker(d.cfg.Seckill, ks, s.rdb, db, store)
	return &driftKit{s: s, d: d, db: db, ck: ck, rb: rb, cfg: d.cfg.Seckill}
}

// check runs Checker.Check (3 rounds) on items, all when none.
func (k *driftKit) check(t *testing.T, items ...int64) seckill.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := k.ck.Check(ctx, items)
	if err != nil {
		t.Fatalf("check %v: %v", items, err)
	}
	return res
}

// rebuild runs the whole resync of item (pause, grace, drain, wait for
// CDC, rewrite).
func (k *driftKit) rebuild(t *testing.T, item int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := k.rb.Rebuild(ctx, item); err != nil {
		t.Fatalf("rebuild item %d: %v", item, err)
	}
	t.Logf("rebuild of item %d took %s", item, time.Since(start).Round(time.Millisecond))
}

// addItem inserts an item and makes its keys with the Rebuilder (what the
// jobs role does by itself; the daemons of some tests here run without it).
func (k *driftKit) addItem(t *testing.T, id, stock int64) {
	t.Helper()
	if _, err := k.s.db.Exec("INSERT INTO sk_items (id, name, stock) VALUES (?, ?, ?)", id, fmt.Sprintf("item %d", id), stock); err != nil {
		t.Fatal(err)
	}
	k.rebuild(t, id)
	keys := seckill.KeysFor(k.cfg.KeyPrefix, id)
	if v, err := k.s.rdb.Get(context.Background(), keys.Stock).Int64(); err != nil || v != stock {
		t.Fatalf("item %d after the rebuild: Redis stock %d (%v), want %d", id, v, err, stock)
	}
}

// buy reserves item for user and waits until the order is created in
// MySQL and CDC took it out of pending; it returns the order id.
func (k *driftKit) buy(t *testing.T, item, user int64) string {
	t.Helper()
	r, err := k.d.reserve(item, user)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve item %d user %d: %v %d %s", item, user, err, r.Status, r.Raw)
	}
	order := r.Body["order_id"].(string)
	keys := seckill.KeysFor(k.cfg.KeyPrefix, item)
	driftEventually(t, 30*time.Second, "order "+order+" created and out of pending", func() bool {
		var status string
		err := k.s.db.QueryRow("SELECT status FROM sk_orders WHERE order_id = ?", order).Scan(&status)
		_, zerr := k.s.rdb.ZScore(context.Background(), keys.Pending, order+":"+strconv.FormatInt(user, 10)).Result()
		return err == nil && status == seckill.StatusCreated && zerr != nil
	})
	return order
}

// driftEventually polls cond every 20 ms until it holds or timeout fails t.
func driftEventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// driftExpect fails t unless res reports exactly want (any order, every
// field compared).
func driftExpect(t *testing.T, res seckill.Result, want ...seckill.Drift) {
	t.Helper()
	key := func(d seckill.Drift) string {
		return fmt.Sprintf("item=%d kind=%s detail=%q redis=%q mysql=%q", d.Item, d.Kind, d.Detail, d.Redis, d.MySQL)
	}
	var got, exp []string
	for _, d := range res.Drift {
		got = append(got, key(d))
	}
	for _, d := range want {
		exp = append(exp, key(d))
	}
	slices.Sort(got)
	slices.Sort(exp)
	if !slices.Equal(got, exp) {
		t.Fatalf("drift reported:\n  %s\nwant:\n  %s\ncheck output:\n%s", strings.Join(got, "\n  "), strings.Join(exp, "\n  "), res.Format())
	}
}

// driftReport returns the report of item in res.
func driftReport(t *testing.T, res seckill.Result, item int64) seckill.ItemReport {
	t.Helper()
	for _, r := range res.Items {
		if r.Item == item {
			return r
		}
	}
	t.Fatalf("no report for item %d in %+v", item, res.Items)
	return seckill.ItemReport{}
}

// driftHash reads a hash as a map.
func (k *driftKit) hash(t *testing.T, key string) map[string]string {
	t.Helper()
	m, err := k.s.rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDriftRedisSide: drift injected by hand into Redis, one kind per item,
// is reported by Checker.Check with its kind, detail and both sides, and
// Rebuilder.Rebuild (what `cachesync resync` runs) repairs it: the check is
// clean afterwards and the keys are what MySQL says. The daemon runs
// without the jobs role, so nothing else repairs the keys (no reaper, no
// rebuild on a missing ready marker, no periodic check).
func TestDriftRedisSide(t *testing.T) {
	s := newStack(t)
	d := s.start("roles: [api, consumer]")
	k := newDriftKit(t, s, d)
	ctx := context.Background()

	t.Run("stock wrong value", func(t *testing.T) {
		k.addItem(t, 11, 10)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 11)
		k.buy(t, 11, 1)
		driftExpect(t, k.check(t, 11))
		s.rdb.Set(ctx, keys.Stock, 7, 0)
		res := k.check(t, 11)
		driftExpect(t, res, seckill.Drift{Item: 11, Kind: "stock", Redis: "7", MySQL: "9"})
		if r := driftReport(t, res, 11); r.MySQLStock != 9 || r.RedisStock != 7 || r.Inconclusive {
			t.Errorf("report: %+v", r)
		}
		k.rebuild(t, 11)
		if v, _ := s.rdb.Get(ctx, keys.Stock).Int64(); v != 9 {
			t.Errorf("Redis stock %d after the rebuild, want 9", v)
		}
		driftExpect(t, k.check(t, 11))
	})

	t.Run("stock and ready marker gone", func(t *testing.T) {
		k.addItem(t, 12, 4)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 12)
		s.rdb.Del(ctx, keys.Stock, keys.Ready)
		driftExpect(t, k.check(t, 12),
			seckill.Drift{Item: 12, Kind: "stock", Redis: "missing", MySQL: "4"},
			seckill.Drift{Item: 12, Kind: "not_ready", Redis: "no ready marker"})
		if r, _ := d.reserve(12, 1); r.Status != 503 {
			t.Errorf("reserve while not ready: %d %s", r.Status, r.Raw)
		}
		k.rebuild(t, 12)
		driftExpect(t, k.check(t, 12))
		if r, _ := d.reserve(12, 1); r.Status != 202 {
			t.Errorf("reserve after the rebuild: %d %s", r.Status, r.Raw)
		}
	})

	t.Run("buyers extra and missing", func(t *testing.T) {
		k.addItem(t, 13, 10)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 13)
		o1 := k.buy(t, 13, 1)
		o2 := k.buy(t, 13, 2)
		driftExpect(t, k.check(t, 13))
		bogus := "13-0190f0e0-0000-7000-8000-000000000999"
		s.rdb.HSet(ctx, keys.Buyers, "999", bogus)
		s.rdb.HDel(ctx, keys.Buyers, "1")
		driftExpect(t, k.check(t, 13),
			seckill.Drift{Item: 13, Kind: "buyer_extra", Detail: "999", Redis: bogus, MySQL: "none"},
			seckill.Drift{Item: 13, Kind: "buyer_missing", Detail: "1", Redis: "none", MySQL: o1})
		k.rebuild(t, 13)
		if got, want := k.hash(t, keys.Buyers), map[string]string{"1": o1, "2": o2}; !maps.Equal(got, want) {
			t.Errorf("buyers after the rebuild: %v, want %v", got, want)
		}
		driftExpect(t, k.check(t, 13))
		if r, _ := d.reserve(13, 1); r.Status != 409 {
			t.Errorf("user 1 reserving again after the rebuild: %d %s (want 409: already bought)", r.Status, r.Raw)
		}
	})

	t.Run("pending entry whose order is stored", func(t *testing.T) {
		k.addItem(t, 14, 3)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 14)
		o1 := k.buy(t, 14, 1)
		m := o1 + ":1"
		s.rdb.ZAdd(ctx, keys.Pending, redisZ(float64(time.Now().UnixMilli()), m))
		res := k.check(t, 14)
		driftExpect(t, res, seckill.Drift{Item: 14, Kind: "pending", Detail: m, Redis: "pending", MySQL: "order stored"})
		if r := driftReport(t, res, 14); r.Available != 1 || r.Pending != 1 || r.MySQLStock != 2 {
			t.Errorf("report with the stale entry: %+v (want available 1 = stock 2 - 1 stale pending)", r)
		}
		k.rebuild(t, 14)
		if n := s.rdb.ZCard(ctx, keys.Pending).Val(); n != 0 {
			t.Errorf("pending has %d entries after the rebuild", n)
		}
		res = k.check(t, 14)
		driftExpect(t, res)
		if r := driftReport(t, res, 14); r.Available != 2 || r.Buyers != 1 || r.LiveOrders != 1 {
			t.Errorf("report after the rebuild: %+v", r)
		}
	})

	t.Run("orphan", func(t *testing.T) {
		k.addItem(t, 15, 5)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 15)
		order := "15-0190f0e0-0000-7000-8000-000000000077"
		m := order + ":77"
		at := time.Now().Add(-time.Hour).UnixMilli()
		s.rdb.ZAdd(ctx, keys.Pending, redisZ(float64(at), m))
		s.rdb.HSet(ctx, keys.Buyers, "77", order)
		driftExpect(t, k.check(t, 15), seckill.Drift{Item: 15, Kind: "orphan", Detail: m,
			Redis: "pending since " + time.UnixMilli(at).UTC().Format(time.RFC3339), MySQL: "no order"})
		k.rebuild(t, 15)
		if n := s.rdb.ZCard(ctx, keys.Pending).Val(); n != 0 {
			t.Errorf("pending has %d entries after the rebuild", n)
		}
		if b := k.hash(t, keys.Buyers); len(b) != 0 {
			t.Errorf("buyers after the rebuild: %v", b)
		}
		var status string
		if err := s.db.QueryRow("SELECT status FROM sk_orders WHERE order_id = ?", order).Scan(&status); err != nil || status != seckill.StatusCanceled {
			t.Errorf("the orphan's order row: %q %v, want a canceled fence row", status, err)
		}
		driftExpect(t, k.check(t, 15))
	})

	t.Run("unparsable pending entry", func(t *testing.T) {
		k.addItem(t, 16, 5)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 16)
		s.rdb.ZAdd(ctx, keys.Pending, redisZ(float64(time.Now().UnixMilli()), "garbage"), redisZ(float64(time.Now().UnixMilli()), "x:y"))
		driftExpect(t, k.check(t, 16),
			seckill.Drift{Item: 16, Kind: "pending", Detail: "garbage", Redis: "unparsable member"},
			seckill.Drift{Item: 16, Kind: "pending", Detail: "x:y", Redis: "unparsable member"})
		k.rebuild(t, 16)
		if n := s.rdb.ZCard(ctx, keys.Pending).Val(); n != 0 {
			t.Errorf("pending has %d entries after the rebuild", n)
		}
		if b := k.hash(t, keys.Buyers); len(b) != 0 {
			t.Errorf("buyers after the rebuild: %v", b)
		}
		driftExpect(t, k.check(t, 16))
	})

	t.Run("in-flight reservation without its buyer", func(t *testing.T) {
		k.addItem(t, 17, 5)
		keys := seckill.KeysFor(k.cfg.KeyPrefix, 17)
		order := "17-0190f0e0-0000-7000-8000-000000000055"
		s.rdb.ZAdd(ctx, keys.Pending, redisZ(float64(time.Now().UnixMilli()), order+":55"))
		driftExpect(t, k.check(t, 17),
			seckill.Drift{Item: 17, Kind: "buyer_missing", Detail: "55", Redis: "none", MySQL: "in flight: " + order})
		k.rebuild(t, 17)
		if got, want := k.hash(t, keys.Buyers), map[string]string{"55": order}; !maps.Equal(got, want) {
			t.Errorf("buyers after the rebuild: %v, want %v", got, want)
		}
		driftExpect(t, k.check(t, 17))
	})

	// Nothing leaked into another item.
	driftExpect(t, k.check(t))
}

// TestDriftMySQLBehindDaemon: a stock change made in MySQL without the
// binlog (sql_log_bin = 0) never reaches Redis; the check reports it as
// stock drift, the resync rewrites Redis from MySQL (ready again), the
// check is clean, and reservations follow MySQL's stock again.
func TestDriftMySQLBehindDaemon(t *testing.T) {
	s := newStack(t)
	d := s.start("")
	s.addItem(21, 50)
	k := newDriftKit(t, s, d)
	ctx := context.Background()
	for u := int64(1); u <= 3; u++ {
		k.buy(t, 21, u)
	}
	driftExpect(t, k.check(t, 21))

	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET SESSION sql_log_bin = 0", "UPDATE sk_items SET stock = 2 WHERE id = 21", "SET SESSION sql_log_bin = 1"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close()

	res := k.check(t, 21)
	driftExpect(t, res, seckill.Drift{Item: 21, Kind: "stock", Redis: "47", MySQL: "2"})
	if r := driftReport(t, res, 21); r.RedisStock != 47 || r.MySQLStock != 2 || r.Available != 47 || r.Inconclusive {
		t.Errorf("report: %+v", r)
	}
	k.rebuild(t, 21)
	keys := seckill.KeysFor(k.cfg.KeyPrefix, 21)
	if v, err := s.rdb.Get(ctx, keys.Stock).Int64(); err != nil || v != 2 {
		t.Errorf("Redis stock %d (%v) after the resync, want MySQL's 2", v, err)
	}
	if n := s.rdb.Exists(ctx, keys.Ready).Val(); n != 1 {
		t.Errorf("ready marker missing after the resync")
	}
	res = k.check(t, 21)
	driftExpect(t, res)
	if r := driftReport(t, res, 21); r.RedisStock != 2 || r.MySQLStock != 2 || r.Available != 2 || r.Buyers != 3 || r.LiveOrders != 3 || !r.Ready {
		t.Errorf("report after the resync: %+v", r)
	}
	// Redis follows MySQL again: two more units, then sold out.
	for u := int64(10); u < 12; u++ {
		if r, err := d.reserve(21, u); err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d after the resync: %v %d %s", u, err, r.Status, r.Raw)
		}
	}
	if r, _ := d.reserve(21, 12); r.Status != 410 {
		t.Errorf("third reservation after the resync: %d %s (want 410)", r.Status, r.Raw)
	}
	driftEventually(t, 30*time.Second, "5 created orders, stock 0", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 21 AND status = 'created'") == 5 &&
			s.int("SELECT stock FROM sk_items WHERE id = 21") == 0
	})
	driftEventually(t, 30*time.Second, "nothing pending", func() bool { return s.rdb.ZCard(ctx, keys.Pending).Val() == 0 })
	driftExpect(t, k.check(t, 21))
}
