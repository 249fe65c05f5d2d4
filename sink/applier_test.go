package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// These tests drive an Applier with hand-made transactions against a real
// Redis: the version guard, tombstones, reset detection, rule errors and
// all-or-nothing batches.

type applierEnv struct {
	t    *testing.T
	rdb  *redis.Client
	a    *Applier
	ks   keyspace.Keyspace
	in   chan *binlog.Txn
	done chan error
	stop context.CancelFunc
	// running: a Run was started and its result not yet read from done.
	running bool
}

var goods = binlog.NewTable("shop", "goods", []string{"id", "name", "stock", "status"}, nil)

func startApplier(t *testing.T, rdb *redis.Client, r Resume, rules ...RuleConfig) *applierEnv {
	t.Helper()
	cfg := Config{KeyPrefix: "cs:" + t.Name() + ":", Channel: "inv:" + t.Name(), Rules: rules}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := NewApplier(cfg, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a.newBackOff = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
	ctx, cancel := context.WithCancel(context.Background())
	e := &applierEnv{t: t, rdb: rdb, a: a, ks: keyspace.Keyspace{Prefix: cfg.KeyPrefix},
		in: make(chan *binlog.Txn, 16), done: make(chan error, 1), stop: cancel}
	go func() { e.done <- a.Run(ctx, e.in, r) }()
	e.running = true
	t.Cleanup(func() {
		e.stop()
		if e.running {
			<-e.done
		}
	})
	return e
}

// apply sends a complete txn and waits until the applier has written its
// checkpoint (a new one, even when replaying a position).
func (e *applierEnv) apply(txn *binlog.Txn) {
	e.t.Helper()
	prev := e.a.Applied()
	e.in <- txn
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cp := e.a.Applied(); cp != prev && cp.Pos == txn.Pos {
			return
		}
		select {
		case err := <-e.done:
			e.t.Fatalf("applier stopped: %v", err)
		case <-time.After(2 * time.Millisecond):
		}
	}
	e.t.Fatalf("transaction at %s not applied within 5s", txn.Pos)
}

func (e *applierEnv) get(key string) (string, bool) {
	e.t.Helper()
	v, err := e.rdb.Get(context.Background(), key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return v, true
}

func pos(file string, p uint32) binlog.Position { return binlog.Position{File: file, Pos: p} }

func txn(p binlog.Position, changes ...binlog.Change) *binlog.Txn {
	return &binlog.Txn{Pos: p, Commit: time.Now(), Changes: changes}
}

func ins(row ...any) binlog.Change { return binlog.Change{Table: goods, Op: binlog.Insert, After: row} }
func del(row ...any) binlog.Change {
	return binlog.Change{Table: goods, Op: binlog.Delete, Before: row}
}
func upd(before, after []any) binlog.Change {
	return binlog.Change{Table: goods, Op: binlog.Update, Before: before, After: after}
}

func TestApplierVersionGuard(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	p := "vg:"
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindRewrite, Key: p + "j:{id}", Columns: []string{"id", "stock"}, Versioned: true},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: p + "m:{id}", Column: "stock", Versioned: true},
	)
	e.apply(txn(pos("binlog.000001", 500), ins(int32(1), "a", int32(10), "on")))
	if v, _ := e.get(p + "j:1"); v != `{"id":1,"stock":10}` {
		t.Fatalf("after insert: %q", v)
	}
	// A replay of an older transaction (as after a restart) does not
	// regress the key.
	e.apply(txn(pos("binlog.000001", 400), ins(int32(1), "a", int32(5), "on")))
	if v, _ := e.get(p + "m:1"); v != "10" {
		t.Errorf("older version applied: mirror = %q, want 10", v)
	}
	// A later file wins even with a smaller offset.
	e.apply(txn(pos("binlog.000002", 4), upd([]any{int32(1), "a", int32(10), "on"}, []any{int32(1), "a", int32(11), "on"})))
	if v, _ := e.get(p + "m:1"); v != "11" {
		t.Errorf("newer file: mirror = %q, want 11", v)
	}
	if v, _ := e.get(e.ks.Version(p + "m:1")); v != "8589934596" { // 2<<32 | 4
		t.Errorf("version key = %q, want 8589934596", v)
	}
	// Delete leaves a tombstone that keeps an older insert from
	// resurrecting the key.
	e.apply(txn(pos("binlog.000002", 100), del(int32(1), "a", int32(11), "on")))
	for _, k := range []string{p + "j:1", p + "m:1"} {
		if _, ok := e.get(k); ok {
			t.Errorf("%s still exists after delete", k)
		}
		ttl, err := rdb.PTTL(context.Background(), e.ks.Version(k)).Result()
		if err != nil || ttl <= 23*time.Hour || ttl > 24*time.Hour {
			t.Errorf("tombstone %s: TTL %v (%v), want about 24h", e.ks.Version(k), ttl, err)
		}
	}
	e.apply(txn(pos("binlog.000002", 50), ins(int32(1), "a", int32(9), "on")))
	if v, ok := e.get(p + "j:1"); ok {
		t.Errorf("older insert resurrected a deleted key: %q", v)
	}
	// Replaying the delete itself is harmless.
	e.apply(txn(pos("binlog.000002", 100), del(int32(1), "a", int32(11), "on")))
	if _, ok := e.get(p + "j:1"); ok {
		t.Errorf("key exists after replayed delete")
	}
	cp, ok, err := ReadCheckpoint(context.Background(), rdb, e.ks)
	if err != nil || !ok {
		t.Fatalf("ReadCheckpoint: %v %v", ok, err)
	}
	// The checkpoint is that of the last batch applied, even a replay.
	if cp.Pos != pos("binlog.000002", 100) {
		t.Errorf("checkpoint %s, want binlog.000002:100", cp.Pos)
	}
}

// TestApplierUnversioned: rules without versions (the default) apply in
// binlog order with no version keys and no per-row Redis calls: a run of
// consecutive writes is one MSET, of deletes one DEL, however the rows of
// a transaction interleave their keys.
func TestApplierUnversioned(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindRewrite, Key: "j:{id}", Columns: []string{"id", "stock"}},
		RuleConfig{Table: "shop.goods", Kind: KindRewrite, Key: "h:{id}", Columns: []string{"id", "stock"}, Format: "hash"},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"},
	)
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// 2,500 rows in one transaction: more than one run's cap.
	const n = 2500
	var big []binlog.Change
	for i := range n {
		big = append(big, ins(int32(i), "x", int32(i), "on"))
	}
	e.apply(txn(pos("binlog.000001", 100), big...))
	// The same keys changed over and over within one transaction: the
	// last change wins, as in MySQL.
	row := func(stock int32) []any { return []any{int32(7), "x", stock, "on"} }
	e.apply(txn(pos("binlog.000001", 200),
		upd(row(7), row(70)), del(row(70)...), ins(row(71)...), upd(row(71), row(72)),
		upd([]any{int32(8), "x", int32(8), "on"}, []any{int32(8), "x", int32(80), "on"}),
		del(int32(9), "x", int32(9), "on"),
	))
	// With a checkpoint, a batch this large sends its writes beside the
	// script (MULTI/EXEC).
	var third []binlog.Change
	for i := int32(100); i < 200; i++ {
		third = append(third, upd([]any{i, "x", i, "on"}, []any{i, "x", i + 1000, "on"}))
	}
	third = append(third, del(int32(300), "x", int32(300), "on"))
	e.apply(txn(pos("binlog.000001", 300), third...))
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		want := map[int]string{7: "72", 8: "80", 9: ""}[i]
		switch {
		case i >= 100 && i < 200:
			want = fmt.Sprint(i + 1000)
		case i == 300:
		case i < 7 || i > 9:
			want = fmt.Sprint(i)
		}
		got, _ := e.get(fmt.Sprintf("m:%d", i))
		if got != want {
			t.Fatalf("m:%d = %q, want %q", i, got, want)
		}
		j, _ := e.get(fmt.Sprintf("j:%d", i))
		h, err := rdb.HGet(ctx, fmt.Sprintf("h:%d", i), "stock").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		if want == "" && (j != "" || h != "") || want != "" && (j != fmt.Sprintf(`{"id":%d,"stock":%s}`, i, want) || h != want) {
			t.Fatalf("row %d: j = %q, h stock = %q, want stock %q", i, j, h, want)
		}
	}
	vkeys, err := rdb.Keys(ctx, e.ks.Version("*")).Result()
	if err != nil || len(vkeys) > 0 {
		t.Errorf("version keys %v (%v), want none", vkeys, err)
	}
	calls := func(cmd string) int {
		_, rest, ok := strings.Cut(stats, "cmdstat_"+cmd+":calls=")
		if !ok {
			return 0
		}
		c, _, _ := strings.Cut(rest, ",")
		v, _ := strconv.Atoi(c)
		return v
	}
	// 2,500 rows × 2 keys: five runs of 1,000 keys at most; then one for
	// the keys of rows 7 and 8 (9's are deleted); then one beside the
	// script.
	if x := calls("exec"); x != 1 {
		t.Errorf("EXEC calls = %d, want 1 (the third batch)", x)
	}
	if m := calls("mset"); m != 7 {
		t.Errorf("MSET calls = %d, want a few runs for %d rows", m, n)
	}
	if g := calls("get"); g > 2 { // the seq counter, once a batch
		t.Errorf("GET calls = %d, want at most 2 (one per batch): no row reads a version", g)
	}
	if s := calls("set"); s > 0 {
		t.Errorf("SET calls = %d, want none: writes go in runs", s)
	}
}

// TestApplierDirectKeepsKeyOrder: a key both invalidated and mirrored by
// two rules, changed twice in one large batch: its first write and the
// invalidation run in the script, its last write beside it, and the key
// ends with the last value (it would be deleted if the plain writes ran
// before the script). The script was flushed from Redis before.
func TestApplierDirectKeepsKeyOrder(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{"k:{id}"}},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "k:{id}", Column: "stock"},
	)
	e.apply(txn(pos("binlog.000001", 100), ins(int32(1), "x", int32(1), "on")))
	row := func(id, stock int32) []any { return []any{id, "x", stock, "on"} }
	changes := []binlog.Change{upd(row(1, 1), row(1, 2)), upd(row(1, 2), row(1, 3))}
	for i := int32(10); i < 10+directMin; i++ {
		changes = append(changes, ins(row(i, i)...))
	}
	if err := rdb.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// A Redis without the script (restarted, SCRIPT FLUSH): loaded first.
	if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	e.apply(txn(pos("binlog.000001", 200), changes...))
	if x := rdb.Info(context.Background(), "commandstats").Val(); !strings.Contains(x, "cmdstat_exec:") {
		t.Fatal("the batch did not take the direct path")
	}
	if v, _ := e.get("k:1"); v != "3" {
		t.Errorf("k:1 = %q, want 3", v)
	}
	if v, _ := e.get("k:10"); v != "10" {
		t.Errorf("k:10 = %q, want 10", v)
	}
}

func TestApplierPartialTxnNoCheckpoint(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	e := startApplier(t, rdb, Resume{}, RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"})
	e.apply(txn(pos("binlog.000001", 100), ins(int32(1), "a", int32(1), "on")))
	piece := txn(pos("binlog.000001", 150), ins(int32(2), "b", int32(2), "on"))
	piece.Partial = true
	e.in <- piece
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := e.get("m:2"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("partial piece not applied")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cp, _, err := ReadCheckpoint(context.Background(), rdb, e.ks)
	if err != nil || cp.Pos != pos("binlog.000001", 100) {
		t.Errorf("checkpoint after a partial piece = %s (%v), want binlog.000001:100", cp.Pos, err)
	}
	e.apply(txn(pos("binlog.000001", 200), ins(int32(3), "c", int32(3), "on")))
	cp, _, _ = ReadCheckpoint(context.Background(), rdb, e.ks)
	if cp.Pos != pos("binlog.000001", 200) {
		t.Errorf("checkpoint = %s, want binlog.000001:200", cp.Pos)
	}
}

func TestApplierDetectsReset(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	rule := RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"}

	// Told a checkpoint exists, but there is none: a reset.
	e := startApplier(t, rdb, Resume{Expect: &Checkpoint{Version: 1}}, rule)
	e.in <- txn(pos("binlog.000001", 100), ins(int32(1), "a", int32(1), "on"))
	select {
	case err := <-e.done:
		e.done <- err // for Cleanup
		if !errors.Is(err, ErrRedisReset) {
			t.Fatalf("Run = %v, want ErrRedisReset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return ErrRedisReset")
	}
	if _, ok := e.get("m:1"); ok {
		t.Error("the batch that found the checkpoint missing was applied")
	}

	// Starting without a checkpoint, the first checkpoint written arms the
	// check: a later FLUSHALL is detected.
	e2 := startApplier(t, rdb, Resume{}, rule)
	e2.apply(txn(pos("binlog.000001", 100), ins(int32(1), "a", int32(1), "on")))
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	e2.in <- txn(pos("binlog.000001", 200), ins(int32(2), "b", int32(2), "on"))
	select {
	case err := <-e2.done:
		e2.done <- err
		if !errors.Is(err, ErrRedisReset) {
			t.Fatalf("Run = %v, want ErrRedisReset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return ErrRedisReset after FLUSHALL")
	}
	if n, _ := rdb.DBSize(context.Background()).Result(); n != 0 {
		keys, _ := rdb.Keys(context.Background(), "*").Result()
		t.Errorf("after the reset was detected Redis holds %q, want nothing written", keys)
	}
}

func TestApplierRuleError(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "s:{id}", Column: "status"})
	e.apply(txn(pos("binlog.000001", 100), ins(int32(1), "a", int32(1), "on")))
	// The table lost its status column (ALTER TABLE ... DROP COLUMN).
	dropped := binlog.NewTable("shop", "goods", []string{"id", "name", "stock"}, nil)
	e.in <- txn(pos("binlog.000001", 200), binlog.Change{Table: dropped, Op: binlog.Insert, After: []any{int32(2), "b", int32(2)}})
	select {
	case err := <-e.done:
		e.done <- err
		if !errors.Is(err, ErrRule) {
			t.Fatalf("Run = %v, want ErrRule", err)
		}
		for _, want := range []string{`"status"`, "shop.goods", "binlog.000001:200"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not fail")
	}
	if _, ok := e.get("m:2"); ok {
		t.Error("a rule that fits was applied for the failing transaction")
	}
	cp, _, _ := ReadCheckpoint(context.Background(), rdb, e.ks)
	if cp.Pos != pos("binlog.000001", 100) {
		t.Errorf("checkpoint %s, want binlog.000001:100", cp.Pos)
	}
}

// A batch whose script fails on a write (maxmemory reached under
// noeviction: Redis refuses the script's first write) is applied not at
// all, retried (counted), and applied whole once memory is freed.
func TestApplierAllOrNothing(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "filler", strings.Repeat("x", 4<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "2mb").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(ctx, "maxmemory", "0") })
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"},
		RuleConfig{Table: "shop.goods", Kind: KindMember, Key: "on_sale", Member: "{id}", When: &Condition{Column: "status", Equals: "on"}})
	e.in <- txn(pos("binlog.000001", 100), ins(int32(1), "a", int32(1), "on"), ins(int32(2), "b", int32(2), "off"))
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(e.a.m.retries) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%v retries within 5s of a batch Redis refuses for memory", testutil.ToFloat64(e.a.m.retries))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e.a.Healthy() {
		t.Error("healthy while every apply fails")
	}
	if n := testutil.ToFloat64(e.a.m.errors.WithLabelValues("oom")); n < 3 {
		t.Errorf("%v oom errors counted, want one per try", n)
	}
	for _, k := range []string{"m:1", "m:2", "on_sale", e.ks.Checkpoint(), e.ks.Snapshot()} {
		if n, _ := rdb.Exists(ctx, k).Result(); n != 0 {
			t.Errorf("%s was written by a batch that failed", k)
		}
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	e.apply(txn(pos("binlog.000001", 200)))
	if !e.a.Healthy() {
		t.Error("not healthy after a successful apply")
	}
	if v, _ := e.get("m:2"); v != "2" {
		t.Errorf("m:2 = %q, want 2", v)
	}
	if m, _ := rdb.SMembers(ctx, "on_sale").Result(); len(m) != 1 || m[0] != "1" {
		t.Errorf("on_sale = %q, want [1]", m)
	}
}

// TestApplierCatchUpBatches: transactions that committed long ago (a
// catch-up) trickling in are gathered into few batches (each waits up to
// catchUpWait for more), while live ones arriving the same way go out as
// they come.
func TestApplierCatchUpBatches(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	const n = 60
	batches := func(t *testing.T, commit func() time.Time, offset time.Duration) float64 {
		e := startApplier(t, rdb, Resume{ClockOffset: offset}, RuleConfig{Table: "shop.goods", Kind: KindRewrite, Key: "g:{id}"})
		var last *binlog.Txn
		for i := range n {
			last = txn(pos("binlog.000001", uint32(1000+100*i)), ins(int32(i), "x", int32(i), "on"))
			last.Commit = commit()
			e.in <- last
			time.Sleep(time.Millisecond)
		}
		deadline := time.Now().Add(10 * time.Second)
		for cp := e.a.Applied(); cp == nil || cp.Pos != last.Pos; cp = e.a.Applied() {
			if time.Now().After(deadline) {
				t.Fatalf("not applied within 10 s: at %v", cp)
			}
			time.Sleep(2 * time.Millisecond)
		}
		for i := range n {
			if _, ok := e.get(fmt.Sprintf("g:%d", i)); !ok {
				t.Fatalf("g:%d missing", i)
			}
		}
		return testutil.ToFloat64(e.a.m.batches)
	}
	hourAgo := func() time.Time { return time.Now().Add(-time.Hour) }
	var catchUp, live, skewed float64
	t.Run("catch-up", func(t *testing.T) { catchUp = batches(t, hourAgo, 0) })
	t.Run("live", func(t *testing.T) { live = batches(t, time.Now, 0) })
	// MySQL's clock an hour behind: its commit times look old, yet are live.
	t.Run("live, MySQL's clock behind", func(t *testing.T) { skewed = batches(t, hourAgo, -time.Hour) })
	t.Logf("%d transactions 1 ms apart: %v batches catching up, %v live, %v live with MySQL's clock an hour behind", n, catchUp, live, skewed)
	if skewed <= catchUp {
		t.Errorf("live with MySQL's clock behind, %d transactions went in %v batches, want more than the %v of a catch-up", n, skewed, catchUp)
	}
	if catchUp > n/3 {
		t.Errorf("catching up, %d transactions went in %v batches, want at most %d", n, catchUp, n/3)
	}
	if live <= catchUp {
		t.Errorf("live, %d transactions went in %v batches, want more than the %v of a catch-up (live batches do not wait)", n, live, catchUp)
	}
}
