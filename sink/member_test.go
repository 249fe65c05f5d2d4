package sink

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// These tests drive the member rule's op and value through an Applier with
// hand-made transactions against a real Redis: removal from sorted sets,
// hashes with compare-and-delete, and the type checks that refuse a batch.

var orders = binlog.NewTable("shop", "orders", []string{"order_id", "user_id", "item_id", "status"}, nil)

func order(id string, user, item int64, status string) []any {
	return []any{id, user, item, status}
}

func oIns(row []any) binlog.Change {
	return binlog.Change{Table: orders, Op: binlog.Insert, After: row}
}
func oDel(row []any) binlog.Change {
	return binlog.Change{Table: orders, Op: binlog.Delete, Before: row}
}
func oUpd(before, after []any) binlog.Change {
	return binlog.Change{Table: orders, Op: binlog.Update, Before: before, After: after}
}

// flashSaleRules are the rules of the flash-sale feature, under prefix p.
func flashSaleRules(p string) []RuleConfig {
	return []RuleConfig{
		{Table: "shop.orders", Kind: KindMember, Op: OpRemove, Key: p + "sk:{{{item_id}}}:pending", Member: "{order_id}:{user_id}"},
		{Table: "shop.orders", Kind: KindMember, Key: p + "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "{order_id}",
			When: &Condition{Column: "status", In: []string{"created", "paid"}}},
		{Table: "shop.orders", Kind: KindMember, Op: OpRemove, Key: p + "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "{order_id}",
			When: &Condition{Column: "status", In: []string{"failed", "canceled"}}},
	}
}

func (e *applierEnv) zset(key string) []string {
	e.t.Helper()
	m, err := e.rdb.ZRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *applierEnv) hash(key string) map[string]string {
	e.t.Helper()
	h, err := e.rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func (e *applierEnv) wantHash(step, key string, want map[string]string) {
	e.t.Helper()
	if got := e.hash(key); !maps.Equal(got, want) {
		e.t.Errorf("%s: HGETALL %s = %v, want %v", step, key, got, want)
	}
}

func (e *applierEnv) wantZset(step, key string, want ...string) {
	e.t.Helper()
	if got := e.zset(key); !slices.Equal(got, want) {
		e.t.Errorf("%s: ZRANGE %s = %q, want %q", step, key, got, want)
	}
}

// refused sends txn and waits until Run stops with ErrScript, at once
// (no retries) and naming the key; the caller checks that nothing of the
// batch was written, and may restart.
func (e *applierEnv) refused(txn *binlog.Txn, key string) {
	e.t.Helper()
	e.in <- txn
	select {
	case err := <-e.done:
		e.running = false
		if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "member") {
			e.t.Errorf("Run = %v, want ErrScript naming %s and its rule", err, key)
		}
	case <-time.After(5 * time.Second):
		e.t.Fatal("applier still running though its script must fail")
	}
	wrong := testutil.ToFloat64(e.a.m.errors.WithLabelValues("wrongtype"))
	other := testutil.ToFloat64(e.a.m.errors.WithLabelValues("other"))
	if wrong != 1 || other != 0 {
		e.t.Errorf("errors: %v wrongtype, %v other; want one wrongtype", wrong, other)
	}
	if n := testutil.ToFloat64(e.a.m.retries); n != 0 {
		t := e.t
		t.Errorf("%v retries of a batch no retry can cure", n)
	}
}

// restart runs the applier again from the stored checkpoint, as the
// daemon does after a restart.
func (e *applierEnv) restart() {
	e.t.Helper()
	cp, ok, err := ReadCheckpoint(context.Background(), e.rdb, e.ks)
	if err != nil || !ok {
		e.t.Fatalf("no checkpoint to restart from: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop, e.running = cancel, true
	go func() { e.done <- e.a.Run(ctx, e.in, Resume{Expect: &cp}) }()
}

func TestMemberRemoveFromSortedSet(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	p := "rz:"
	pending := p + "sk:{7}:pending"
	set := p + "set:7"
	e := startApplier(t, rdb, Resume{},
		flashSaleRules(p)[0],
		RuleConfig{Table: "shop.orders", Kind: KindMember, Op: OpRemove, Key: p + "set:{item_id}", Member: "{order_id}",
			When: &Condition{Column: "status", Equals: "paid"}})
	// The application reserved o1..o4 for users 1..4.
	for i, m := range []string{"o1:1", "o2:2", "o3:3", "o4:4"} {
		if err := rdb.ZAdd(ctx, pending, redis.Z{Score: float64(i), Member: m}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.SAdd(ctx, set, "o1", "o2", "o3").Err(); err != nil {
		t.Fatal(err)
	}

	e.apply(txn(pos("binlog.000001", 100), oIns(order("o1", 1, 7, "created"))))
	e.wantZset("insert", pending, "o2:2", "o3:3", "o4:4")
	if m, _ := rdb.SMembers(ctx, set).Result(); len(m) != 3 {
		t.Errorf("insert outside the condition: set = %q, want o1..o3 kept", m)
	}

	// An update whose after-image matches removes (the set is a plain set:
	// SREM); one whose after-image does not, does nothing.
	e.apply(txn(pos("binlog.000001", 200),
		oUpd(order("o1", 1, 7, "created"), order("o1", 1, 7, "paid")),
		oUpd(order("o2", 2, 7, "paid"), order("o2", 2, 7, "canceled"))))
	m, _ := rdb.SMembers(ctx, set).Result()
	if slices.Sort(m); !slices.Equal(m, []string{"o2", "o3"}) {
		t.Errorf("update: set = %q, want [o2 o3]", m)
	}
	e.wantZset("update", pending, "o3:3", "o4:4")

	// A delete never removes, nor adds.
	e.apply(txn(pos("binlog.000001", 300), oDel(order("o3", 3, 7, "paid"))))
	e.wantZset("delete", pending, "o3:3", "o4:4")
	if m, _ := rdb.SMembers(ctx, set).Result(); len(m) != 2 {
		t.Errorf("delete: set = %q, want [o2 o3]", m)
	}

	// A NULL member column names nothing.
	e.apply(txn(pos("binlog.000001", 400), oIns([]any{"o4", nil, int64(7), "created"})))
	e.wantZset("NULL user", pending, "o3:3", "o4:4")

	// The last member removed: the sorted set is gone, and no rule ever
	// creates one.
	e.apply(txn(pos("binlog.000001", 500), oIns(order("o3", 3, 7, "created")), oIns(order("o4", 4, 7, "created"))))
	if n, _ := rdb.Exists(ctx, pending).Result(); n != 0 {
		t.Errorf("%s exists after its last member was removed: %s", pending, rdb.Type(ctx, pending).Val())
	}
}

func TestMemberHashCompareAndDelete(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	p := "hc:"
	buyers := p + "sk:{7}:buyers"
	e := startApplier(t, rdb, Resume{}, flashSaleRules(p)...)
	// The application marked user 9 as a buyer of an order not in MySQL.
	if err := rdb.HSet(ctx, buyers, "9", "o9").Err(); err != nil {
		t.Fatal(err)
	}

	e.apply(txn(pos("binlog.000001", 100), oIns(order("o1", 1, 7, "created"))))
	e.wantHash("insert created", buyers, map[string]string{"1": "o1", "9": "o9"})
	// Still inside the condition, same value: nothing to do.
	e.apply(txn(pos("binlog.000001", 200), oUpd(order("o1", 1, 7, "created"), order("o1", 1, 7, "paid"))))
	e.wantHash("created -> paid", buyers, map[string]string{"1": "o1", "9": "o9"})
	// Leaving the condition deletes the field, as it holds this order.
	e.apply(txn(pos("binlog.000001", 300), oUpd(order("o1", 1, 7, "paid"), order("o1", 1, 7, "canceled"))))
	e.wantHash("paid -> canceled", buyers, map[string]string{"9": "o9"})

	// User 1 orders again: o2 is live.
	e.apply(txn(pos("binlog.000001", 400), oIns(order("o2", 1, 7, "created"))))
	e.wantHash("second order", buyers, map[string]string{"1": "o2", "9": "o9"})
	// An older order of user 1, born canceled or deleted, or leaving the
	// condition, does not remove the entry that names the newer order.
	e.apply(txn(pos("binlog.000001", 500),
		oIns(order("o0", 1, 7, "canceled")),
		oIns(order("o00", 1, 7, "failed")),
		oDel(order("o1", 1, 7, "canceled")),
		oIns(order("o8", 9, 7, "failed"))))
	e.wantHash("older orders", buyers, map[string]string{"1": "o2", "9": "o9"})
	// The order the application wrote, born failed, removes its own entry.
	e.apply(txn(pos("binlog.000001", 600), oIns(order("o9", 9, 7, "failed"))))
	e.wantHash("o9 failed", buyers, map[string]string{"1": "o2"})

	// A changed value while inside the condition: the new value is set,
	// whatever the old one was.
	e.apply(txn(pos("binlog.000001", 700), oUpd(order("o2", 1, 7, "paid"), order("o2b", 1, 7, "paid"))))
	e.wantHash("value changed", buyers, map[string]string{"1": "o2b"})
	if err := rdb.HSet(ctx, buyers, "1", "other").Err(); err != nil {
		t.Fatal(err)
	}
	e.apply(txn(pos("binlog.000001", 800), oUpd(order("o2b", 1, 7, "paid"), order("o2c", 1, 7, "paid"))))
	e.wantHash("value changed from a value not current", buyers, map[string]string{"1": "o2c"})

	// A changed member or key moves the entry.
	e.apply(txn(pos("binlog.000001", 900), oUpd(order("o2c", 1, 7, "paid"), order("o2c", 2, 8, "paid"))))
	e.wantHash("moved", buyers, map[string]string{})
	e.wantHash("moved", p+"sk:{8}:buyers", map[string]string{"2": "o2c"})

	// Deleting the live order deletes its entry; the emptied hash is gone.
	e.apply(txn(pos("binlog.000001", 1000), oDel(order("o2c", 2, 8, "paid"))))
	if n, _ := rdb.Exists(ctx, p+"sk:{8}:buyers").Result(); n != 0 {
		t.Errorf("buyers of item 8 survived the delete of its only order: %v", e.hash(p+"sk:{8}:buyers"))
	}
}

// The rows of one user, applied in either order, end with the live order:
// the snapshot emits rows in primary-key order, whatever their age.
func TestMemberHashOrderIndependent(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	oldCanceled, live := oIns(order("old", 1, 7, "canceled")), oIns(order("new", 1, 7, "created"))
	for name, changes := range map[string][]binlog.Change{
		"old first": {oldCanceled, live},
		"new first": {live, oldCanceled},
	} {
		t.Run(name, func(t *testing.T) {
			p := "oi:" + name + ":"
			e := startApplier(t, rdb, Resume{}, flashSaleRules(p)...)
			// in one transaction, and in two
			e.apply(txn(pos("binlog.000001", 100), changes...))
			e.wantHash("one transaction", p+"sk:{7}:buyers", map[string]string{"1": "new"})
			if err := rdb.Del(context.Background(), p+"sk:{7}:buyers").Err(); err != nil {
				t.Fatal(err)
			}
			e.apply(txn(pos("binlog.000001", 200), changes[0]))
			e.apply(txn(pos("binlog.000001", 300), changes[1]))
			e.wantHash("two transactions", p+"sk:{7}:buyers", map[string]string{"1": "new"})
		})
	}
}

// A member op on a key of the wrong type refuses the whole batch: nothing
// written, no checkpoint; Run stops (no retry can cure it) and, once the
// key is fixed, a restart replays the batch.
func TestMemberWrongType(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		rule  RuleConfig
		setup func(k string) error
		row   []any
	}{
		{"set add on a zset", RuleConfig{Key: "k:{item_id}", Member: "{order_id}"},
			func(k string) error { return rdb.ZAdd(ctx, k, redis.Z{Member: "x"}).Err() }, order("o1", 1, 7, "created")},
		{"set add on a hash", RuleConfig{Key: "k:{item_id}", Member: "{order_id}"},
			func(k string) error { return rdb.HSet(ctx, k, "x", "y").Err() }, order("o1", 1, 7, "created")},
		{"hash add on a zset", RuleConfig{Key: "k:{item_id}", Member: "{user_id}", Value: "{order_id}"},
			func(k string) error { return rdb.ZAdd(ctx, k, redis.Z{Member: "x"}).Err() }, order("o1", 1, 7, "created")},
		{"hash add on a set", RuleConfig{Key: "k:{item_id}", Member: "{user_id}", Value: "{order_id}"},
			func(k string) error { return rdb.SAdd(ctx, k, "x").Err() }, order("o1", 1, 7, "created")},
		{"hash remove on a string", RuleConfig{Key: "k:{item_id}", Member: "{user_id}", Value: "{order_id}", Op: OpRemove},
			func(k string) error { return rdb.Set(ctx, k, "x", 0).Err() }, order("o1", 1, 7, "created")},
		{"set remove on a hash", RuleConfig{Key: "k:{item_id}", Member: "{order_id}", Op: OpRemove},
			func(k string) error { return rdb.HSet(ctx, k, "x", "y").Err() }, order("o1", 1, 7, "created")},
		{"set remove on a list", RuleConfig{Key: "k:{item_id}", Member: "{order_id}", Op: OpRemove},
			func(k string) error { return rdb.RPush(ctx, k, "x").Err() }, order("o1", 1, 7, "created")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := "wt:" + tc.name + ":"
			bad := p + "k:7"
			tc.rule.Table, tc.rule.Kind, tc.rule.Key = "shop.orders", KindMember, p+tc.rule.Key
			e := startApplier(t, rdb, Resume{}, tc.rule,
				RuleConfig{Table: "shop.orders", Kind: KindMember, Key: p + "ok:{item_id}", Member: "{order_id}"})
			if err := tc.setup(bad); err != nil {
				t.Fatal(err)
			}
			typ := rdb.Type(ctx, bad).Val()
			e.apply(txn(pos("binlog.000001", 100), oIns(order("o0", 1, 6, "created"))))
			e.refused(txn(pos("binlog.000001", 200), oIns(order("o9", 1, 6, "created")), oIns(tc.row)), bad)
			if m := rdb.SMembers(ctx, p+"ok:6").Val(); !slices.Equal(m, []string{"o0"}) {
				t.Errorf("ok:6 = %q: a batch that failed was written", m)
			}
			if got := rdb.Type(ctx, bad).Val(); got != typ {
				t.Errorf("%s is a %s, was a %s", bad, got, typ)
			}
			if cp, _, _ := ReadCheckpoint(ctx, rdb, e.ks); cp.Pos != pos("binlog.000001", 100) {
				t.Errorf("checkpoint %s, want binlog.000001:100", cp.Pos)
			}
			if err := rdb.Del(ctx, bad).Err(); err != nil {
				t.Fatal(err)
			}
			e.restart() // replays the refused transaction
			e.apply(txn(pos("binlog.000001", 200), oIns(order("o9", 1, 6, "created")), oIns(tc.row)))
			e.apply(txn(pos("binlog.000001", 300)))
			if m := rdb.SMembers(ctx, p+"ok:6").Val(); len(m) != 2 {
				t.Errorf("after the key was fixed: ok:6 = %q, want [o0 o9]", m)
			}
		})
	}
}

// A set rule and a hash rule naming the same missing key in one batch: the
// checks see the set the first op makes, so the batch is refused before
// it writes anything, not half-way.
func TestMemberWrongTypeWithinBatch(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	e := startApplier(t, rdb, Resume{},
		RuleConfig{Table: "shop.orders", Kind: KindMember, Key: "same:{item_id}", Member: "{order_id}"},
		RuleConfig{Table: "shop.orders", Kind: KindMember, Key: "same:{item_id}", Member: "{user_id}", Value: "{order_id}"},
		RuleConfig{Table: "shop.orders", Kind: KindMirror, Key: "m:{order_id}", Column: "status"})
	e.refused(txn(pos("binlog.000001", 100), oIns(order("o1", 1, 7, "created"))), "same:7")
	if keys := rdb.Keys(ctx, "*").Val(); len(keys) != 0 {
		t.Errorf("Redis holds %q after a refused batch, want nothing", keys)
	}
}

// Without a checkpoint (a snapshot), the keys of adding ops go to the
// snapshot journal, those of removing ops do not (deleting the key would
// undo nothing, and the application fills it: the sale's pending set);
// every member op announces its key.
func TestMemberHashJournalAndAnnounce(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	defer rdb.Close()
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, "inv:"+t.Name())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	e := startApplier(t, rdb, Resume{}, flashSaleRules("j:")...)
	piece := txn(pos("binlog.000001", 100), oIns(order("o1", 1, 7, "created")), oIns(order("o2", 2, 8, "canceled")))
	piece.Partial = true
	e.in <- piece
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ Keys []string }
	if err := json.Unmarshal([]byte(msg.Payload), &m); err != nil {
		t.Fatal(err)
	}
	slices.Sort(m.Keys)
	want := []string{"j:sk:{7}:buyers", "j:sk:{7}:pending", "j:sk:{8}:buyers", "j:sk:{8}:pending"}
	if !slices.Equal(m.Keys, want) {
		t.Errorf("announced %q, want %q", m.Keys, want)
	}
	journal, err := rdb.SMembers(ctx, e.ks.Snapshot()).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(journal)
	if want := []string{"", "j:sk:{7}:buyers"}; !slices.Equal(journal, want) {
		t.Errorf("snapshot journal %q, want %q (only the HA op's key)", journal, want)
	}
	if n, err := e.a.DiscardUnfinishedSnapshot(ctx); err != nil || n != 1 {
		t.Errorf("DiscardUnfinishedSnapshot = %d, %v; want 1 key", n, err)
	}
	if keys := rdb.Keys(ctx, "j:*").Val(); len(keys) != 0 {
		t.Errorf("after the discard Redis still holds %q", keys)
	}
}
