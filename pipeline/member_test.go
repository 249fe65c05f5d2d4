package pipeline_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// The flash-sale rules on orders: an order removes its reservation from the
// pending sorted set the application filled, and the buyers hash maps each
// user to their live order (compare-and-delete keeps an older order from
// removing a newer one's entry).

const ordersTable = `CREATE TABLE orders (
	order_id VARCHAR(32) PRIMARY KEY,
	user_id BIGINT NULL,
	item_id BIGINT NOT NULL,
	status VARCHAR(16) NOT NULL
)`

func (e *env) flashSaleRules() []sink.RuleConfig {
	tbl := e.schema + ".orders"
	return []sink.RuleConfig{
		{Table: tbl, Kind: sink.KindMember, Op: sink.OpRemove, Key: e.p + "sk:{{{item_id}}}:pending", Member: "{order_id}:{user_id}"},
		{Table: tbl, Kind: sink.KindMember, Key: e.p + "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "{order_id}",
			When: &sink.Condition{Column: "status", In: []string{"created", "paid"}}},
		{Table: tbl, Kind: sink.KindMember, Op: sink.OpRemove, Key: e.p + "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "{order_id}",
			When: &sink.Condition{Column: "status", In: []string{"failed", "canceled"}}},
	}
}

// reserve does what the application does when a user grabs a unit: the
// reservation goes to the pending sorted set.
func (e *env) reserve(item, user, orderID string, score float64) {
	e.t.Helper()
	if err := e.rdb.ZAdd(context.Background(), e.p+"sk:{"+item+"}:pending", redis.Z{Score: score, Member: orderID + ":" + user}).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// claim is the application marking user as a buyer of item by orderID.
func (e *env) claim(item, user, orderID string) {
	e.t.Helper()
	if err := e.rdb.HSet(context.Background(), e.p+"sk:{"+item+"}:buyers", user, orderID).Err(); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) wantPending(step, item string, want ...string) {
	e.t.Helper()
	got, err := e.rdb.ZRange(context.Background(), e.p+"sk:{"+item+"}:pending", 0, -1).Result()
	if err != nil || !slices.Equal(got, want) && len(got)+len(want) > 0 {
		e.t.Errorf("%s: ZRANGE sk:{%s}:pending = %q (%v), want %q", step, item, got, err, want)
	}
}

func (e *env) wantBuyers(step, item string, want map[string]string) {
	e.t.Helper()
	got, err := e.rdb.HGetAll(context.Background(), e.p+"sk:{"+item+"}:buyers").Result()
	if err != nil || !maps.Equal(got, want) {
		e.t.Errorf("%s: HGETALL sk:{%s}:buyers = %v (%v), want %v", step, item, got, err, want)
	}
}

// TestMemberFlashSale: inserts, updates and deletes of orders while
// streaming.
func TestMemberFlashSale(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.exec(ordersTable)
	r := e.start(e.flashSaleRules(), nil)
	r.ready(t)
	e.sync(r)

	e.reserve("7", "1", "o1", 1)
	e.reserve("7", "2", "o2", 2)
	e.reserve("7", "3", "o3", 3)
	e.reserve("8", "1", "o8", 1)
	e.claim("7", "2", "o2")
	e.claim("7", "3", "o3")
	e.claim("8", "1", "o8")

	// An order removes its reservation and names the user's live order.
	e.exec(`INSERT INTO orders VALUES ('o1', 1, 7, 'created')`)
	e.sync(r)
	e.wantPending("insert o1", "7", "o2:2", "o3:3")
	e.wantBuyers("insert o1", "7", map[string]string{"1": "o1", "2": "o2", "3": "o3"})
	e.wantPending("insert o1", "8", "o8:1")

	// A canceled order frees the user.
	e.exec(`UPDATE orders SET status = 'paid' WHERE order_id = 'o1'`)
	e.sync(r)
	e.wantBuyers("o1 paid", "7", map[string]string{"1": "o1", "2": "o2", "3": "o3"})
	e.exec(`UPDATE orders SET status = 'canceled' WHERE order_id = 'o1'`)
	e.sync(r)
	e.wantBuyers("o1 canceled", "7", map[string]string{"2": "o2", "3": "o3"})
	e.wantPending("o1 canceled", "7", "o2:2", "o3:3")

	// The user buys again; then an OLD order of theirs arrives canceled
	// (and another failed): the entry names the newer order and stays.
	e.reserve("7", "1", "o4", 4)
	e.exec(`INSERT INTO orders VALUES ('o4', 1, 7, 'created')`)
	e.sync(r)
	e.wantBuyers("insert o4", "7", map[string]string{"1": "o4", "2": "o2", "3": "o3"})
	e.wantPending("insert o4", "7", "o2:2", "o3:3")
	e.tx(`INSERT INTO orders VALUES ('o0', 1, 7, 'canceled')`,
		`INSERT INTO orders VALUES ('o00', 2, 7, 'failed')`)
	e.sync(r)
	e.wantBuyers("old orders canceled", "7", map[string]string{"1": "o4", "2": "o2", "3": "o3"})

	// An order born failed removes the entry that names it, and its
	// reservation.
	e.exec(`INSERT INTO orders VALUES ('o3', 3, 7, 'failed')`)
	e.sync(r)
	e.wantBuyers("o3 failed", "7", map[string]string{"1": "o4", "2": "o2"})
	e.wantPending("o3 failed", "7", "o2:2")

	// Deleting an order: the sync rule removes its entry, the pending
	// set is left alone; deleting a canceled one changes nothing.
	e.exec(`INSERT INTO orders VALUES ('o2', 2, 7, 'created')`)
	e.sync(r)
	e.wantPending("insert o2", "7")
	e.reserve("7", "5", "o5", 5)
	e.claim("7", "5", "o5")
	e.exec(`DELETE FROM orders WHERE order_id IN ('o2', 'o0')`)
	e.sync(r)
	e.wantBuyers("delete o2", "7", map[string]string{"1": "o4", "5": "o5"})
	e.wantPending("delete o2", "7", "o5:5")

	// The order moves to another user: the entry moves too.
	e.exec(`UPDATE orders SET user_id = 6 WHERE order_id = 'o4'`)
	e.sync(r)
	e.wantBuyers("o4 to user 6", "7", map[string]string{"6": "o4", "5": "o5"})

	// A NULL user names no entry.
	e.exec(`INSERT INTO orders VALUES ('o9', NULL, 8, 'created')`)
	e.sync(r)
	e.wantBuyers("NULL user", "8", map[string]string{"1": "o8"})
	e.wantPending("NULL user", "8", "o8:1")
	if n := r.metric(t, "cachesync_sink_null_key_skips_total"); n != 2 {
		t.Errorf("%v NULL key skips, want 2 (pending and buyers)", n)
	}
}

// TestMemberFlashSaleSnapshot: the first start loads the orders from a
// snapshot, which reads them in primary-key order: for one user the old
// canceled order comes first, for the other the live one. Both end with
// the live order.
func TestMemberFlashSaleSnapshot(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.exec(ordersTable)
	e.exec(`INSERT INTO orders VALUES
		('o100', 1, 7, 'canceled'), ('o200', 1, 7, 'created'),
		('o300', 2, 7, 'paid'), ('o400', 2, 7, 'canceled'),
		('o500', 3, 7, 'failed')`)
	var ids []string
	rows, err := e.db.Query("SELECT order_id FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"o100", "o200", "o300", "o400", "o500"}; !slices.Equal(ids, want) {
		t.Fatalf("SELECT * reads %q, want primary-key order %q: the test relies on it", ids, want)
	}
	// What the application wrote while the orders were placed.
	for _, o := range []struct{ user, id string }{{"1", "o100"}, {"1", "o200"}, {"2", "o300"}, {"2", "o400"}, {"3", "o500"}, {"4", "o600"}} {
		e.reserve("7", o.user, o.id, 1)
	}
	e.claim("7", "2", "o400") // claimed by o400, which was later canceled
	e.claim("7", "3", "o500")
	e.claim("7", "4", "o600")
	r := e.start(e.flashSaleRules(), nil)
	r.ready(t)
	e.sync(r)
	e.wantBuyers("snapshot", "7", map[string]string{"1": "o200", "2": "o300", "4": "o600"})
	e.wantPending("snapshot", "7", "o600:4")

	// Streaming goes on from the snapshot.
	e.exec(`INSERT INTO orders VALUES ('o600', 4, 7, 'canceled')`)
	e.sync(r)
	e.wantBuyers("o600 canceled", "7", map[string]string{"1": "o200", "2": "o300"})
	e.wantPending("o600 canceled", "7")
}

// TestMemberFlashSaleWrongType: the buyers hash of an item is a sorted set
// in Redis; the transaction that adds to it is refused whole, the pipeline
// stops at once naming the key and its rule (no retry can cure it), and
// the checkpoint stays before it; fixed and restarted, it replays it. On a
// Redis Cluster the refusal is whole for the slot of the bad key (item 8's
// keys); the transaction's other slot (item 7's) may show it already:
// slots do not change together.
func TestMemberFlashSaleWrongType(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	e.exec(ordersTable)
	r := e.start(e.flashSaleRules(), nil)
	r.ready(t)
	e.sync(r)
	e.reserve("7", "1", "o1", 1)
	e.reserve("8", "2", "o2", 2)
	bad := e.p + "sk:{8}:buyers"
	if err := e.rdb.ZAdd(ctx, bad, redis.Z{Score: 1, Member: "2"}).Err(); err != nil {
		t.Fatal(err)
	}
	before, _ := e.checkpoint()

	e.tx(`INSERT INTO orders VALUES ('o1', 1, 7, 'created')`,
		`INSERT INTO orders VALUES ('o2', 2, 8, 'created')`)
	after, err := e.position().Version()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the pipeline still runs after a batch no retry can apply")
	}
	if !errors.Is(r.err, sink.ErrScript) || !strings.Contains(r.err.Error(), bad) ||
		!strings.Contains(r.err.Error(), "holds a zset, not a hash") || !strings.Contains(r.err.Error(), "member:"+e.p+"sk:{{{item_id}}}:buyers") {
		t.Errorf("Run = %v, want sink.ErrScript naming %s and its rule", r.err, bad)
	}
	if n := r.metric(t, "cachesync_sink_retries_total"); n != 0 {
		t.Errorf("%v retries of a batch no retry can apply", n)
	}
	if cp, _ := e.checkpoint(); cp.Version >= after || cp.Version < before.Version {
		t.Errorf("checkpoint %s (version %d) after a refused transaction ending at version %d", cp.Pos, cp.Version, after)
	}
	e.wantPending("refused", "8", "o2:2")
	if !e.ks.Cluster {
		e.wantPending("refused", "7", "o1:1")
		e.wantBuyers("refused", "7", map[string]string{})
	}
	if typ := e.rdb.Type(ctx, bad).Val(); typ != "zset" {
		t.Errorf("%s is a %s, want the zset untouched", bad, typ)
	}

	if err := e.rdb.Del(ctx, bad).Err(); err != nil {
		t.Fatal(err)
	}
	r = e.start(e.flashSaleRules(), nil)
	r.ready(t)
	e.sync(r)
	e.wantPending("fixed", "7")
	e.wantPending("fixed", "8")
	e.wantBuyers("fixed", "7", map[string]string{"1": "o1"})
	e.wantBuyers("fixed", "8", map[string]string{"2": "o2"})
}
