package seckill_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRedisLossMidSale restarts Redis (on a cluster every node, see
// loseRedisData) with its data lost (testenv's Redis has no persistence)
// while a sale is in progress and the consumer is
// behind (stalled on a row lock of ours, released 3 s after the loss), so
// that orders accepted before the loss are still in Kafka when their
// pending entries vanish. Reservations must be refused with 503 while the
// item's keys are missing; the CDC pipeline re-snapshots and the jobs role
// rebuilds the item from MySQL (pause, drain the consumer, wait for CDC,
// rewrite, ready) exactly once, and the item is not paused again; then the
// sale continues to the last unit with no oversell: orders created =
// initial stock − MySQL stock, MySQL stock ≥ 0, no user with two live
// orders, every accepted order created, and no order stored as failed (the
// consumer never found MySQL without stock for an accepted reservation).
func TestRedisLossMidSale(t *testing.T) {
	const (
		item     = 41
		stock    = 200
		users    = 1000
		workers  = 32
		pace     = 4 * time.Millisecond
		stallAt  = 40              // accepted reservations before the consumer is stalled
		lossAt   = 90              // accepted reservations before Redis goes
		stallFor = 3 * time.Second // from the loss on
	)
	t0 := time.Now()
	s := newStack(t)
	d := s.start("")
	s.addItem(item, stock)
	ctx := context.Background()

	type answer struct {
		user       int64
		status     int
		body       string
		start, end time.Time
	}
	var (
		mu       sync.Mutex
		answers  []answer
		accepted = map[string]int64{} // order → user
		settled  atomic.Int64         // users with a final answer (202, 409, 410)
	)
	queue := make(chan int64, users)
	for u := int64(1); u <= users; u++ {
		queue <- u
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopLoad(); wg.Wait() }() // a failed test stops its load first
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for range workers {
		wg.Go(func() {
			for {
				var u int64
				select {
				case <-loadCtx.Done():
					return
				case u = <-queue:
				}
				select {
				case <-loadCtx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				r, err := d.reserve(item, u)
				if err != nil {
					t.Errorf("reserve user %d: %v", u, err)
					return
				}
				mu.Lock()
				answers = append(answers, answer{user: u, status: r.Status, body: r.Raw, start: start, end: time.Now()})
				if r.Status == 202 {
					accepted[r.Body["order_id"].(string)] = u
				}
				mu.Unlock()
				switch r.Status {
				case 202, 409, 410:
					if settled.Add(1) == users {
						stopLoad()
					}
				case 503:
					time.AfterFunc(50*time.Millisecond, func() { queue <- u }) // retry later
				default:
					t.Errorf("reserve user %d: %d %s", u, r.Status, r.Raw)
					return
				}
			}
		})
	}
	nAccepted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted)
	}
	s.eventually(30*time.Second, fmt.Sprintf("%d reservations accepted", stallAt), func() bool { return nAccepted() >= stallAt })

	// Stall the consumer: a transaction of ours holds the item's row lock,
	// so the orders reserved from now on wait in Kafka. When Redis loses
	// their pending entries, only the rebuild's drain wait keeps them
	// counted.
	stall, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Rollback() //nolint:errcheck // released below
	var locked int64
	if err := stall.QueryRowContext(ctx, "SELECT stock FROM sk_items WHERE id = ? FOR UPDATE", item).Scan(&locked); err != nil {
		t.Fatal(err)
	}
	s.eventually(30*time.Second, fmt.Sprintf("%d reservations accepted", lossAt), func() bool { return nAccepted() >= lossAt })
	time.AfterFunc(stallFor, func() { _ = stall.Rollback() })

	// Redis goes away with its data, and comes back empty.
	beforeLoss := nAccepted()
	rebuildsBefore := metric(t, d, "cachesync_seckill_rebuilds_total") // the item's first
	pendingLost := s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val()
	s.rdb.Set(ctx, "test:canary", "1", 0)
	tKill := time.Now()
	s.loseRedisData(300 * time.Millisecond)
	tStart := time.Now()
	if s.rdb.Exists(ctx, "test:canary").Val() != 0 || s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val() != 0 {
		t.Fatalf("Redis kept data across the restart")
	}
	// Watch the ready marker: lastAbsent is the start of the last poll that
	// found it missing before one found it present.
	var lastAbsent, firstPresent time.Time
	probed := false
	for {
		p := time.Now()
		n, err := s.rdb.Exists(ctx, fmt.Sprintf("sk:{%d}:ready", item)).Result()
		if err == nil && n == 1 {
			firstPresent = time.Now()
			break
		}
		if err == nil {
			lastAbsent = p
		}
		if !probed && time.Since(tStart) > 50*time.Millisecond {
			// A reservation of our own while the keys are missing.
			r, err := d.reserve(item, users+1)
			if err != nil || r.Status != 503 {
				t.Errorf("reservation while the keys are missing: %v %d %s, want 503", err, r.Status, r.Raw)
			}
			probed = strings.Contains(r.Raw, "not ready")
		}
		if time.Since(tStart) > 30*time.Second {
			t.Fatalf("item %d not ready 30s after Redis came back", item)
		}
		time.Sleep(time.Millisecond)
	}
	if !probed {
		t.Errorf("no reservation was answered 503 \"not ready\" while the keys were missing")
	}
	t.Logf("Redis back %s after the kill; item ready again %s later; %d accepted before the loss, %d pending entries lost, %d stored at the stall",
		tStart.Sub(tKill).Round(time.Millisecond), firstPresent.Sub(tStart).Round(time.Millisecond), beforeLoss, pendingLost, stock-locked)
	if firstPresent.Sub(tKill) < stallFor {
		t.Errorf("item ready again %s after the loss, before the stalled consumer could store its backlog (%s)", firstPresent.Sub(tKill), stallFor)
	}

	// The sale continues to its end.
	select {
	case <-loadCtx.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("load not finished 60s after the item was ready again: %d of %d users answered", settled.Load(), users)
	}
	wg.Wait()

	// Every reservation that ran on the new Redis before the item was
	// ready again (started after Redis came back, answered before a poll
	// still found the marker missing) was refused with 503.
	codes := map[int]int{}
	window, notReady, acceptedAfter, pausedAgain := 0, 0, 0, 0
	for _, a := range answers {
		codes[a.status]++
		if a.start.After(tStart) && a.end.Before(lastAbsent) {
			window++
			if a.status != 503 {
				t.Errorf("user %d answered %d while the item's keys were missing: %s", a.user, a.status, a.body)
			}
			if strings.Contains(a.body, "not ready") {
				notReady++
			}
		}
		if a.status == 202 && a.start.After(firstPresent) {
			acceptedAfter++
		}
		if a.status == 503 && a.start.After(firstPresent) {
			pausedAgain++
		}
	}
	// Once rebuilt, the item stays ready: nothing else pauses it.
	if pausedAgain > 0 {
		t.Errorf("%d reservations answered 503 after the item was rebuilt and ready (paused again)", pausedAgain)
	}
	t.Logf("answers %v; %d answered while the keys were missing (%d \"not ready\"); %d accepted after the rebuild", codes, window, notReady, acceptedAfter)
	if acceptedAfter == 0 {
		t.Errorf("no reservation accepted after the rebuild: the sale did not continue")
	}
	if codes[409] != 0 {
		t.Errorf("%d answers 409: a user was found holding an order while retrying", codes[409])
	}

	// Quiescence, then the books.
	s.eventually(30*time.Second, "every accepted order stored, nothing pending", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", item) >= int64(nAccepted()) &&
			s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val() == 0
	})
	left := s.int("SELECT stock FROM sk_items WHERE id = ?", item)
	created := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'created'", item)
	failed := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'failed'", item)
	canceled := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'canceled'", item)
	t.Logf("MySQL: %d created, %d failed, %d canceled (fenced), stock %d", created, failed, canceled, left)
	if left < 0 || created > stock || created != stock-left {
		t.Errorf("created %d, MySQL stock %d: want created = %d − stock ≤ %d, stock ≥ 0", created, left, stock, stock)
	}
	if created != stock {
		t.Errorf("sale ended with %d of %d units sold", created, stock)
	}
	if failed != 0 {
		rows, _ := s.db.Query("SELECT order_id, user_id, reason FROM sk_orders WHERE item_id = ? AND status = 'failed' LIMIT 10", item)
		for rows != nil && rows.Next() {
			var o, u, reason string
			_ = rows.Scan(&o, &u, &reason)
			t.Logf("failed order %s user %s: %s", o, u, reason)
		}
		if rows != nil {
			rows.Close()
		}
		t.Errorf("%d orders stored as failed: a reservation was accepted that MySQL could not honour", failed)
	}
	if n := s.int("SELECT COUNT(*) FROM (SELECT user_id FROM sk_orders WHERE item_id = ? AND status IN ('created', 'paid') GROUP BY user_id HAVING COUNT(*) > 1) x", item); n != 0 {
		t.Errorf("%d users hold two live orders", n)
	}
	mu.Lock()
	if int64(len(accepted)) != created {
		t.Errorf("%d reservations accepted, %d orders created", len(accepted), created)
	}
	for o, u := range accepted {
		var status string
		var user int64
		if err := s.db.QueryRow("SELECT status, user_id FROM sk_orders WHERE order_id = ?", o).Scan(&status, &user); err != nil || status != "created" || user != u {
			t.Errorf("accepted order %s of user %d: %q user %d %v, want created", o, u, status, user, err)
		}
	}
	mu.Unlock()
	s.eventually(20*time.Second, "Redis stock equal to MySQL", func() bool {
		v, err := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64()
		return err == nil && v == left
	})
	want := map[string]string{}
	rows, err := s.db.Query("SELECT user_id, order_id FROM sk_orders WHERE item_id = ? AND status IN ('created', 'paid')", item)
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
		t.Errorf("buyers hash has %d users, MySQL %d live orders; they differ", len(got), len(want))
	}
	if v := metric(t, d, "cachesync_seckill_rebuilds_total") - rebuildsBefore; v != 1 {
		t.Errorf("%v rebuilds after the loss, want 1", v)
	}
	if v := metric(t, d, "cachesync_redis_resets_total"); v != 1 {
		t.Errorf("redis_resets_total = %v, want 1 (the CDC pipeline re-snapshots once)", v)
	}
	if v := metric(t, d, `cachesync_seckill_reservations_total{result="not_ready"}`); v < 1 {
		t.Errorf(`reservations_total{result="not_ready"} = %v, want at least 1`, v)
	}
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
}

// TestRedisLossWhileIdle restarts Redis with its data lost while nothing
// is being written to MySQL (every order stored, no reservation in
// flight). Reservations are refused with 503 until the item is rebuilt,
// and then accepted again: the loss must be detected without waiting for
// the next MySQL change (which, the sale being refused, may never come).
func TestRedisLossWhileIdle(t *testing.T) {
	const item = 42
	s := newStack(t)
	d := s.start("")
	s.addItem(item, 10)
	ctx := context.Background()
	for u := int64(1); u <= 3; u++ {
		if r, err := d.reserve(item, u); err != nil || r.Status != 202 {
			t.Fatalf("reserve: %v %+v", err, r)
		}
	}
	s.eventually(20*time.Second, "3 orders stored, nothing pending", func() bool {
		v, _ := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64()
		return v == 7 && s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val() == 0
	})
	s.loseRedisData(0)
	tStart := time.Now()
	r, err := d.reserve(item, 4)
	if err != nil || r.Status != 503 {
		t.Fatalf("reservation right after the loss: %v %+v, want 503", err, r)
	}
	var got reply
	s.eventually(30*time.Second, "a reservation accepted again after the loss", func() bool {
		got, err = d.reserve(item, 4)
		return err == nil && got.Status == 202
	})
	t.Logf("accepted again %s after Redis came back", time.Since(tStart).Round(time.Millisecond))
	if r, _ := d.reserve(item, 1); r.Status != 409 {
		t.Errorf("user 1 (order stored before the loss) reserving again: %d %s, want 409", r.Status, r.Raw)
	}
	s.eventually(20*time.Second, "4 orders, stock 6 in MySQL and Redis", func() bool {
		v, _ := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64()
		return s.int("SELECT stock FROM sk_items WHERE id = ?", item) == 6 && v == 6 &&
			s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'created'", item) == 4
	})
}
