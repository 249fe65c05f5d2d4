package seckill_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestRestockClearsSoldOut: after a sell-out the local flag answers 410
// without Redis; an admin restock (MySQL only) reaches Redis through CDC,
// clears the flag through the invalidation channel, and new reservations
// succeed up to the new stock.
func TestRestockClearsSoldOut(t *testing.T) {
	s := newStack(t)
	d := s.start("admin_token: " + adminToken)
	s.addItem(2, 3)
	for u := int64(1); u <= 3; u++ {
		if r, err := d.reserve(2, u); err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d: %v %+v", u, err, r)
		}
	}
	// Let the three orders reach MySQL and come back through CDC first:
	// each of those invalidations names the item's keys and drops the
	// local flag (a stock change may be a restock), which would make the
	// count of locally answered requests below depend on timing.
	ctx := context.Background()
	s.eventually(30*time.Second, "3 orders stored and nothing pending", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 2 AND status = 'created'") == 3 &&
			s.rdb.ZCard(ctx, "sk:{2}:pending").Val() == 0
	})
	// Orders stored is not yet their stock change applied by CDC: its
	// message may still come and drop the flag once. Ten requests leave
	// room for that; at least two must be answered from the flag.
	for u := int64(4); u <= 13; u++ {
		if r, err := d.reserve(2, u); err != nil || r.Status != 410 {
			t.Fatalf("reserve after sell-out: %v %+v", err, r)
		}
	}
	local := metric(t, d, `cachesync_seckill_reservations_total{result="sold_out_local"}`)
	if local < 2 {
		t.Errorf("sold_out_local = %v of 10, want >= 2 (the flag should answer after a 410)", local)
	}
	// Without the token: refused, nothing changes.
	if r, _ := call("POST", d.base+"/admin/items/2/restock", `{"add":5}`, "Authorization", "Bearer "+adminToken); r.Status != 404 {
		t.Fatalf("restock on the public listener: %+v, want 404 (admin listener only)", r)
	}
	if r, _ := call("POST", d.admin+"/admin/items/2/restock", `{"add":5}`); r.Status != 401 {
		t.Fatalf("restock without token: %+v", r)
	}
	if r, _ := call("POST", d.admin+"/admin/items/2/restock", `{"add":5}`, "Authorization", "Bearer wrong"); r.Status != 401 {
		t.Fatalf("restock with a wrong token: %+v", r)
	}
	r, err := call("POST", d.admin+"/admin/items/2/restock", `{"add":5}`, "Authorization", "Bearer "+adminToken)
	if err != nil || r.Status != 200 {
		t.Fatalf("restock: %v %+v", err, r)
	}
	ok := 0
	s.eventually(20*time.Second, "reservations succeed after the restock", func() bool {
		r, err := d.reserve(2, int64(100+ok))
		if err == nil && r.Status == 202 {
			ok++
		}
		return ok > 0
	})
	for u := int64(200); ok < 5; u++ {
		r, err := d.reserve(2, u)
		if err != nil || r.Status != 202 {
			t.Fatalf("reservation %d of 5 after restock: %v %+v", ok+1, err, r)
		}
		ok++
	}
	if r, _ := d.reserve(2, 999); r.Status != 410 {
		t.Fatalf("after the restocked units: %+v", r)
	}
	s.eventually(30*time.Second, "8 orders, stock 0", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 2 AND status = 'created'") == 8 &&
			s.int("SELECT stock FROM sk_items WHERE id = 2") == 0
	})
}

// TestUnpaidTimeout: an unpaid order is canceled after unpaid_timeout, its
// stock returns in MySQL and (through CDC) in Redis, and the user may buy
// again; a paid order is left alone.
func TestUnpaidTimeout(t *testing.T) {
	s := newStack(t)
	d := s.start("unpaid_timeout: 1500ms")
	s.addItem(3, 2)
	a, _ := d.reserve(3, 1)
	b, _ := d.reserve(3, 2)
	if a.Status != 202 || b.Status != 202 {
		t.Fatalf("reserve: %+v %+v", a, b)
	}
	oa, ob := a.Body["order_id"].(string), b.Body["order_id"].(string)
	s.eventually(20*time.Second, "both orders created", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 3 AND status = 'created'") == 2
	})
	if r, err := d.pay(2, ob); err != nil || r.Status != 200 || r.Body["status"] != "paid" {
		t.Fatalf("pay: %v %+v", err, r)
	}
	s.eventually(20*time.Second, "unpaid order canceled", func() bool {
		r, _ := d.getOrder(1, oa)
		return r.Body["status"] == "canceled"
	})
	if r, _ := d.pay(1, oa); r.Status != 409 {
		t.Errorf("paying a canceled order: %+v", r)
	}
	if n := s.int("SELECT stock FROM sk_items WHERE id = 3"); n != 1 {
		t.Errorf("MySQL stock %d after the cancel, want 1", n)
	}
	ctx := context.Background()
	s.eventually(20*time.Second, "Redis stock 1 and user 1 out of buyers", func() bool {
		v, _ := s.rdb.Get(ctx, "sk:{3}:stock").Int64()
		return v == 1 && !s.rdb.HExists(ctx, "sk:{3}:buyers", "1").Val()
	})
	if r, _ := d.getOrder(2, ob); r.Body["status"] != "paid" {
		t.Errorf("paid order: %+v", r)
	}
	// User 1 may buy again.
	s.eventually(20*time.Second, "user 1 buys again", func() bool {
		r, _ := d.reserve(3, 1)
		return r.Status == 202
	})
}

// TestOrphanReaped: a pending reservation with no order (a crash between
// reserve and produce) is released after orphan_age: its order is fenced
// in MySQL as canceled, and CDC removes it from pending and buyers.
func TestOrphanReaped(t *testing.T) {
	s := newStack(t)
	d := s.start("orphan_age: 2s")
	s.addItem(4, 1)
	ctx := context.Background()
	order := "4-0190f0e0-0000-7000-8000-000000000001"
	old := time.Now().Add(-time.Hour).UnixMilli()
	s.rdb.ZAdd(ctx, "sk:{4}:pending", redisZ(float64(old), order+":77"))
	s.rdb.HSet(ctx, "sk:{4}:buyers", "77", order)
	if r, _ := d.reserve(4, 1); r.Status != 410 && r.Status != 202 {
		t.Fatalf("reserve: %+v", r)
	}
	s.eventually(20*time.Second, "orphan released", func() bool {
		return s.rdb.ZScore(ctx, "sk:{4}:pending", order+":77").Err() != nil && !s.rdb.HExists(ctx, "sk:{4}:buyers", "77").Val()
	})
	var status, reason string
	if err := s.db.QueryRow("SELECT status, reason FROM sk_orders WHERE order_id = ?", order).Scan(&status, &reason); err != nil || status != "canceled" || !strings.Contains(reason, "orphan") {
		t.Fatalf("fence row: %q %q %v", status, reason, err)
	}
	if metric(t, d, "cachesync_seckill_orphans_reaped_total") != 1 {
		t.Errorf("orphans_reaped_total != 1")
	}
}

// TestProduceFailure: with the broker gone, a reservation is answered
// 202 after its produce failed: Kafka may have written an attempt, so the
// order stays in the outbox for the jobs leader, and the reservation is
// kept (no fence, nothing released) until Kafka takes it.
func TestProduceFailure(t *testing.T) {
	s := newStack(t)
	d := s.start("")
	s.addItem(5, 10)
	s.kafka.Close()
	r, err := d.reserve(5, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve with Kafka down: %v %+v, want 202", err, r)
	}
	ctx := context.Background()
	order, _ := r.Body["order_id"].(string)
	if s.rdb.ZScore(ctx, "sk:{5}:pending", order+":1").Err() != nil || s.rdb.HGet(ctx, "sk:{5}:buyers", "1").Val() != order {
		t.Errorf("reservation %s not kept after a failed produce", order)
	}
	if !s.rdb.HExists(ctx, "sk:{5}:outbox", order).Val() {
		t.Errorf("order %s not in the outbox after a failed produce", order)
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 5"); n != 0 {
		t.Errorf("%d order rows, want none (no fence)", n)
	}
	if metric(t, d, `cachesync_seckill_reservations_total{result="reserved_unacked"}`) != 1 {
		t.Errorf("reserved_unacked metric not counted")
	}
}

// TestBadInput: malformed requests get 4xx with the generic error body
// (a message and the request id of X-Request-Id), never a panic or a
// reservation.
func TestBadInput(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	d := s.start("limits: {per_user: 1, user_burst: 2, per_ip: 0}")
	s.addItem(6, 100)
	cases := []struct {
		path, body string
		status     int
	}{
		{"/seckill/items/6/reservations", `{`, 400},
		{"/seckill/items/6/reservations", `[]`, 400},
		{"/seckill/items/6/reservations", `{"user_id":1}`, 400}, // the user is the token's, never the body's
		{"/seckill/items/6/reservations", `{"user_id":"x"}`, 400},
		{"/seckill/items/6/reservations", `{"user":1}`, 400},
		{"/seckill/items/6/reservations", `{}{}`, 400},
		{"/seckill/items/6/reservations", `{"pad":"` + strings.Repeat("x", 8000) + `"}`, 413},
		{"/seckill/items/abc/reservations", ``, 400},
		{"/seckill/items/-1/reservations", ``, 400},
		{"/seckill/items/99999999999999999999/reservations", ``, 400},
	}
	for i, c := range cases {
		// One user per case: the per-user limit is not what this tests.
		r, err := call("POST", d.base+c.path, c.body, asUser(int64(1000+i))...)
		if err != nil || r.Status != c.status {
			t.Errorf("POST %s %.40q: %v %d %s, want %d", c.path, c.body, err, r.Status, r.Raw, c.status)
			continue
		}
		wantErrorBody(t, r)
	}
	if r, _ := d.getOrder(1, "nonsense"); r.Status != 400 {
		t.Errorf("GET /orders/nonsense: %+v", r)
	}
	if r, _ := d.getOrder(1, "6-0190f0e0-0000-7000-8000-000000000009"); r.Status != 404 {
		t.Errorf("GET unknown order: %+v", r)
	}
	// Unknown item: 404 — never a reservation (TestUnknownItems).
	if r, _ := d.reserve(12345, 1); r.Status != 404 {
		t.Errorf("unknown item: %+v", r)
	}
	// Per-user limit: burst 2, then 429.
	codes := map[int]int{}
	for i := 0; i < 5; i++ {
		r, _ := d.reserve(6, 42)
		codes[r.Status]++
	}
	if codes[429] < 2 {
		t.Errorf("per-user limit: answers %v, want at least two 429", codes)
	}
	// Counted once stored: pending and MySQL read one after the other
	// count an order stored in between twice.
	s.eventually(30*time.Second, "nothing pending for item 6", func() bool {
		return s.rdb.ZCard(context.Background(), "sk:{6}:pending").Val() == 0
	})
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 6"); n != 1 {
		t.Errorf("%d orders for item 6, want 1", n)
	}
}

// wantErrorBody checks r is the generic error body: exactly an error
// message and the request id, which is also the X-Request-Id header.
func wantErrorBody(t *testing.T, r reply) {
	t.Helper()
	id, _ := r.Body["request_id"].(string)
	msg, _ := r.Body["error"].(string)
	if msg == "" || id == "" || id != r.Header.Get("X-Request-Id") {
		t.Errorf("%d %s (X-Request-Id %q): want {error, request_id} with the header's id", r.Status, r.Raw, r.Header.Get("X-Request-Id"))
	}
	for k := range r.Body {
		if k != "error" && k != "request_id" && k != "order_id" {
			t.Errorf("%d %s: unexpected member %q", r.Status, r.Raw, k)
		}
	}
}

// TestKafkaBreaker: with Kafka down, the first reservations each wait for
// their produce to fail (202, their orders kept in the outbox); after
// three of them (the breaker's trip) the breaker opens and the next ones
// are refused at once (503), reserving nothing, and /readyz reports kafka
// failing.
func TestKafkaBreaker(t *testing.T) {
	standaloneOnly(t, whyKafka)
	const trip = 3 // seckill's breakerTrip
	s := newStack(t)
	d := s.start("")
	s.addItem(7, 100)
	s.kafka.Close()
	ctx := context.Background()
	for u := int64(1); u <= trip; u++ {
		if r, err := d.reserve(7, u); err != nil || r.Status != 202 {
			t.Fatalf("reservation %d with Kafka down: %v %+v, want 202", u, err, r)
		}
	}
	start := time.Now()
	for u := int64(100); u < 110; u++ {
		if r, err := d.reserve(7, u); err != nil || r.Status != 503 {
			t.Fatalf("reservation with the breaker open: %v %+v", err, r)
		}
	}
	// The produce timeout is 1 s: ten waits would take 10 s.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("10 reservations with the breaker open took %v", took)
	}
	if got := metric(t, d, `cachesync_seckill_reservations_total{result="kafka_down"}`); got < 1 {
		t.Errorf("kafka_down = %v, want the refusals counted", got)
	}
	if n := s.rdb.ZCard(ctx, "sk:{7}:pending").Val(); n != trip {
		t.Errorf("pending has %d entries, want the %d kept in the outbox: refused reservations reserve nothing", n, trip)
	}
	if n := s.rdb.HLen(ctx, "sk:{7}:outbox").Val(); n != trip {
		t.Errorf("outbox has %d entries, want %d", n, trip)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := call("GET", d.admin+"/readyz", "")
		if err == nil && r.Status == 503 && strings.Contains(r.Raw, "kafka") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not report kafka failing: %v %+v", err, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
