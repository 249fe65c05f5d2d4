package seckill_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestOutboxCrashAfterReserve: an all-roles daemon (child process) kills
// itself with SIGKILL right after a reserve script returned, before the
// order is produced (CACHESYNC_TEST_KILL_AFTER_RESERVE), while several
// buyers reserve at once. Every reservation Redis holds has its message in
// the item's outbox; after a restart the new jobs leader produces them,
// and each is stored in MySQL within seconds, long before orphan_age
// (10 min, the default here). Buyers whose request died with the process
// retry: one holding an order gets 409 with it, one whose request never
// reached Redis reserves anew. Afterwards: no oversell, no duplicate
// order, nothing pending, Redis equal to MySQL. Before the outbox, the
// reservations stayed held, the item answering "sold out" while MySQL had
// stock, until the orphan reaper released them after orphan_age.
func TestOutboxCrashAfterReserve(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	const (
		item   = 41
		stock  = 10
		buyers = 8
	)
	bin := testenv.BuildCachesync(t)
	s := newStack(t)
	child := s.newSaleChild(bin, "")
	run := child.StartEnv(t, "CACHESYNC_TEST_KILL_AFTER_RESERVE=1")
	child.waitStarted(t, run)
	s.addItem(item, stock)

	// The buyers reserve at once; the first reservation to return from
	// Redis kills the process, the others of its pipeline are reserved too.
	var wg sync.WaitGroup
	for u := int64(1); u <= buyers; u++ {
		wg.Go(func() {
			if r, err := reserveAt(child.base, item, u); err == nil {
				t.Errorf("user %d: answered %d %s by a daemon that should have died", u, r.Status, r.Raw)
			}
		})
	}
	wg.Wait()
	select {
	case <-run.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("run %d did not kill itself after a reservation%s", run.N, run.Tail())
	}
	ctx := context.Background()
	pending := fmt.Sprintf("sk:{%d}:pending", item)
	outbox := fmt.Sprintf("sk:{%d}:outbox", item)
	held := map[string]int64{} // order → user, the reservations the crash left
	for _, m := range s.rdb.ZRange(ctx, pending, 0, -1).Val() {
		i := strings.LastIndexByte(m, ':')
		var u int64
		fmt.Sscan(m[i+1:], &u)
		held[m[:i]] = u
	}
	if len(held) == 0 {
		t.Fatalf("no reservation in Redis after the crash")
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", item); n != 0 {
		t.Fatalf("%d orders stored before the restart: the crash came after a produce", n)
	}
	queued := s.rdb.HKeys(ctx, outbox).Val()
	if len(queued) != len(held) {
		t.Errorf("outbox holds %d orders, pending %d: want every unproduced reservation's message in the outbox", len(queued), len(held))
	}
	t.Logf("the crash left %d reservations of %d buyers", len(held), buyers)

	start := time.Now()
	run = child.Start(t)
	stored := func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'created'", item) == int64(len(held))
	}
	if !pollUntil(60*time.Second, stored) {
		t.Fatalf("%d of the %d reservations left by the crash stored in MySQL 60s after the restart (orphan_age is 10m)%s",
			s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", item), len(held), run.Tail())
	}
	took := time.Since(start)
	child.waitStarted(t, run)
	t.Logf("restart to every order stored: %s", took.Round(time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("orders stored %s after the restart, want within seconds", took)
	}
	for order, user := range held {
		var u int64
		if err := s.db.QueryRow("SELECT user_id FROM sk_orders WHERE order_id = ? AND status = 'created'", order).Scan(&u); err != nil || u != user {
			t.Errorf("order %s: user %d, %v; want created for user %d", order, u, err, user)
		}
	}
	s.eventually(20*time.Second, "the outbox emptied", func() bool { return s.rdb.HLen(ctx, outbox).Val() == 0 })

	// The buyers retry: those holding an order are told which.
	owners := map[int64]string{}
	for o, u := range held {
		owners[u] = o
	}
	accepted := len(held)
	for u := int64(1); u <= buyers; u++ {
		r, err := reserveAt(child.base, item, u)
		if err != nil {
			t.Fatalf("user %d retries: %v", u, err)
		}
		switch o, ok := owners[u]; {
		case ok && (r.Status != 409 || r.Body["order_id"] != o):
			t.Errorf("user %d retries: %d %s, want 409 with order %s", u, r.Status, r.Raw, o)
		case !ok && r.Status != 202:
			t.Errorf("user %d (no reservation before the crash) retries: %d %s, want 202", u, r.Status, r.Raw)
		case !ok:
			accepted++
		}
	}
	s.eventually(20*time.Second, "every order stored", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", item) == int64(accepted)
	})
	s.settled(item, accepted)
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'created'", item); n != int64(buyers) {
		t.Errorf("%d created orders, want one per buyer (%d)", n, buyers)
	}
	if left := s.int("SELECT stock FROM sk_items WHERE id = ?", item); left+int64(accepted) != stock {
		t.Errorf("MySQL stock %d + %d orders, want %d", left, accepted, stock)
	}
	s.eventually(20*time.Second, "Redis stock equal to MySQL's, nothing pending or queued", func() bool {
		v, _ := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64()
		return v == s.int("SELECT stock FROM sk_items WHERE id = ?", item) &&
			s.rdb.ZCard(ctx, pending).Val() == 0 && s.rdb.HLen(ctx, outbox).Val() == 0
	})
	want := map[string]string{}
	rows, err := s.db.Query("SELECT user_id, order_id FROM sk_orders WHERE item_id = ?", item)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var u, o string
		if err := rows.Scan(&u, &o); err != nil {
			t.Fatal(err)
		}
		want[u] = o
	}
	rows.Close()
	if got := s.rdb.HGetAll(ctx, fmt.Sprintf("sk:{%d}:buyers", item)).Val(); !maps.Equal(got, want) {
		t.Errorf("buyers %v, want MySQL's orders %v", got, want)
	}
	run.Term(t, childTermWithin)
	child.CheckLogs(t)
}

// TestOutboxReproduced: a reservation whose order is acknowledged leaves
// nothing in the outbox (within moments of the 202); one left there (as by a crash before the
// produce) is produced by the jobs leader once older than outbox_age, not
// before, then removed; the order is stored and Redis settles.
func TestOutboxReproduced(t *testing.T) {
	s := newStack(t)
	d := s.start("")
	s.addItem(42, 5)
	ctx := context.Background()
	r, err := d.reserve(42, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve: %v %+v", err, r)
	}
	// The entry goes in one of the next pipelines after the 202.
	s.eventually(2*time.Second, "the acknowledged order's outbox entry removed", func() bool { return s.rdb.HLen(ctx, "sk:{42}:outbox").Val() == 0 })

	// What the reserve script leaves when the process dies before the produce.
	order := "42-0190f0e0-0000-7000-8000-0000000000bb"
	reserved := time.Now()
	body := fmt.Sprintf(`{"order_id":%q,"user_id":2,"item_id":42,"reserved_ms":%d}`, order, reserved.UnixMilli())
	s.rdb.ZAdd(ctx, "sk:{42}:pending", redisZ(float64(reserved.UnixMilli()), order+":2"))
	s.rdb.HSet(ctx, "sk:{42}:buyers", "2", order)
	s.rdb.HSet(ctx, "sk:{42}:outbox", order, body)

	time.Sleep(2 * time.Second) // outbox_age is 5s (produce_timeout 1s)
	if s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ?", order) != 0 || s.rdb.HLen(ctx, "sk:{42}:outbox").Val() != 1 {
		t.Errorf("the entry was produced before outbox_age")
	}
	s.eventually(20*time.Second, "the outbox's order stored", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND user_id = 2 AND status = 'created'", order) == 1
	})
	t.Logf("stored %s after its reservation", time.Since(reserved).Round(time.Millisecond))
	s.eventually(5*time.Second, "the entry removed", func() bool { return s.rdb.HLen(ctx, "sk:{42}:outbox").Val() == 0 })
	if v := metric(t, d, `cachesync_seckill_outbox_total{result="produced"}`); v != 1 {
		t.Errorf("outbox produced = %v, want 1", v)
	}
	s.settled(42, 2)
	if n := s.int("SELECT stock FROM sk_items WHERE id = 42"); n != 3 {
		t.Errorf("MySQL stock %d, want 3", n)
	}
}

// TestOutboxSparedByReaper: Kafka refuses every produce. A reservation is
// answered 202 (its order waits in the outbox), and the orphan reaper,
// even past orphan_age, leaves it alone, as does the drift check; once
// Kafka takes produces again the jobs leader produces it and the order is
// stored. Before, the order was fenced and the reservation released (503).
func TestOutboxSparedByReaper(t *testing.T) {
	s := newStack(t)
	d := s.start("orphan_age: 3s\noutbox_age: 2s")
	s.addItem(43, 5)
	ctx := context.Background()
	down := s.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "cachesync.orders", Err: kerr.NotEnoughReplicas, Count: -1})
	r, err := d.reserve(43, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve with Kafka refusing: %v %+v, want 202", err, r)
	}
	order, _ := r.Body["order_id"].(string)
	if !s.rdb.HExists(ctx, "sk:{43}:outbox", order).Val() {
		t.Fatalf("order %s not in the outbox after an unacknowledged produce", order)
	}
	time.Sleep(5 * time.Second) // orphan_age 3s, job_interval 200ms
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ?", order); n != 0 {
		t.Errorf("%d rows for order %s while it waits in the outbox, want none (no fence)", n, order)
	}
	if s.rdb.ZCard(ctx, "sk:{43}:pending").Val() != 1 || !s.rdb.HExists(ctx, "sk:{43}:outbox", order).Val() {
		t.Errorf("reservation or outbox entry gone while Kafka refuses")
	}
	if v := metric(t, d, "cachesync_seckill_outbox_waiting"); v != 1 {
		t.Errorf("outbox waiting = %v, want 1", v)
	}
	// Nor does the drift check call it an orphan.
	driftExpect(t, newDriftKit(t, s, d).check(t, 43))
	down.Remove()
	s.eventually(20*time.Second, "the order stored once Kafka is back", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'created'", order) == 1
	})
	s.eventually(5*time.Second, "the outbox emptied", func() bool { return s.rdb.HLen(ctx, "sk:{43}:outbox").Val() == 0 })
	s.settled(43, 1)
	if v := metric(t, d, `cachesync_seckill_orphans_reaped_total`); v != 0 {
		t.Errorf("orphans reaped = %v, want 0", v)
	}
}

// TestReaperWaitsForConsumer: an accepted order whose message waits in
// Kafka (no consumer runs) is not an orphan, however old its reservation:
// the reaper waits until the consumer group has read every message.
// Before, past orphan_age it fenced the order (the stress run of the
// suite saw it with a consumer slowed down) and the buyer's 202 was lost.
func TestReaperWaitsForConsumer(t *testing.T) {
	s := newStack(t)
	d := s.start("orphan_age: 2s\nroles: [api, jobs]") // no consumer anywhere
	s.addItem(44, 5)
	ctx := context.Background()
	r, err := d.reserve(44, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve: %v %+v", err, r)
	}
	order, _ := r.Body["order_id"].(string)
	s.eventually(2*time.Second, "the acknowledged order's outbox entry removed", func() bool { return s.rdb.HLen(ctx, "sk:{44}:outbox").Val() == 0 })
	time.Sleep(5 * time.Second) // orphan_age 2s, job_interval 200ms
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ?", order); n != 0 {
		t.Fatalf("%d rows for order %s while its message waits in Kafka, want none (not fenced)", n, order)
	}
	if s.rdb.ZScore(ctx, "sk:{44}:pending", order+":1").Err() != nil {
		t.Fatalf("reservation %s released while its message waits in Kafka", order)
	}
	if v := metric(t, d, `cachesync_seckill_orphans_reaped_total`); v != 0 {
		t.Errorf("orphans reaped = %v, want 0", v)
	}
	s.start("roles: [consumer]")
	s.eventually(30*time.Second, "the order stored once a consumer runs", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND user_id = 1 AND status = 'created'", order) == 1
	})
	s.settled(44, 1)
}
