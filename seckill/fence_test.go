package seckill_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The produce-failure path: Kafka did not acknowledge an order, so the
// API fences the order id in MySQL and only then decides what happens to
// the reservation in Redis. Each test below checks, after quiescence, that
// MySQL's live orders plus Redis's pending entries equal the reservations
// answered 202, and that every live order has its user's buyers entry.

// holdProduce makes the broker wait, before it handles a produce request
// of the orders topic, until until returns (polled every 20 ms, 20 s at
// most); first says whether the first such request is held too.
func holdProduce(c *kfake.Cluster, first bool, until func() bool) {
	var n atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		p := req.(*kmsg.ProduceRequest)
		if len(p.Topics) == 0 || p.Topics[0].Topic != "cachesync.orders" {
			return nil, nil, false
		}
		if n.Add(1) == 1 && !first {
			return nil, nil, false
		}
		c.SleepControl(func() {
			for deadline := time.Now().Add(20 * time.Second); !until() && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
		})
		return nil, nil, false
	})
}

// settled checks the invariants once CDC has caught up: live orders
// (created, paid) plus pending entries equal accepted, every live order's
// user maps to it in buyers, and buyers holds nobody else.
func (s *stack) settled(item int64, accepted int) {
	s.t.Helper()
	ctx := context.Background()
	pending, buyers := fmt.Sprintf("sk:{%d}:pending", item), fmt.Sprintf("sk:{%d}:buyers", item)
	live := map[string]string{}
	s.eventually(20*time.Second, fmt.Sprintf("item %d settled: live orders + pending = %d", item, accepted), func() bool {
		rows, err := s.db.Query("SELECT order_id, user_id FROM sk_orders WHERE item_id = ? AND status IN ('created', 'paid')", item)
		if err != nil {
			s.t.Fatal(err)
		}
		defer rows.Close()
		clear(live)
		for rows.Next() {
			var id, user string
			if err := rows.Scan(&id, &user); err != nil {
				s.t.Fatal(err)
			}
			live[user] = id
		}
		return len(live)+int(s.rdb.ZCard(ctx, pending).Val()) == accepted
	})
	for user, id := range live {
		if got := s.rdb.HGet(ctx, buyers, user).Val(); got != id {
			s.t.Errorf("user %s holds live order %s, buyers says %q", user, id, got)
		}
	}
	if n := s.rdb.HLen(ctx, buyers).Val(); n != s.rdb.ZCard(ctx, pending).Val()+int64(len(live)) {
		s.t.Errorf("buyers has %d users; %d live orders, %d pending", n, len(live), s.rdb.ZCard(ctx, pending).Val())
	}
}

// loggedOnce checks that exactly one log line names order, and that it is
// the 503's line, with its request id.
func loggedOnce(t *testing.T, logs *testenv.LogBuffer, order, requestID string) {
	t.Helper()
	var lines []string
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, order) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], requestID) {
		t.Errorf("order %s in %d log lines, want one with request id %s:\n%s", order, len(lines), requestID, strings.Join(lines, "\n"))
	}
}

// TestProduceTimeoutKeptInOutbox: Kafka acknowledges only after
// produce_timeout. The outcome is unknown, so nothing is fenced or
// released: the answer is 202 with the order, which stays in the outbox.
// The late message becomes the order; the jobs leader produces the entry
// again after outbox_age, a duplicate the consumer ignores, and removes
// it. The user is told of the order when reserving again (409). One
// warning names the order. Before the outbox, the order was fenced and
// the reservation released (503).
func TestProduceTimeoutKeptInOutbox(t *testing.T) {
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("", logTo(&logs, zerolog.WarnLevel))
	s.addItem(21, 5)
	var answered atomic.Bool
	holdProduce(s.kafka, true, answered.Load)
	r, err := d.reserve(21, 1)
	answered.Store(true)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve with the ack late: %v %+v, want 202", err, r)
	}
	order, _ := r.Body["order_id"].(string)
	ctx := context.Background()
	if !s.rdb.HExists(ctx, "sk:{21}:outbox", order).Val() {
		t.Errorf("order %s not in the outbox after a produce that timed out", order)
	}
	s.eventually(20*time.Second, "the late message stored as the order", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'created'", order) == 1
	})
	// Once at least: a copy whose ack is late (a slow machine) is
	// produced again on the next tick.
	s.eventually(20*time.Second, "the outbox's copy consumed as a duplicate, the entry removed", func() bool {
		return metric(t, d, `cachesync_seckill_orders_consumed_total{outcome="duplicate"}`) >= 1 && s.rdb.HLen(ctx, "sk:{21}:outbox").Val() == 0
	})
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 21"); n != 1 {
		t.Errorf("%d rows for item 21, want the order alone (no fence)", n)
	}
	if n := strings.Count(logs.String(), order); n != 1 || !strings.Contains(logs.String(), "kept in the outbox") {
		t.Errorf("order %s in %d log lines, want 1 saying it was kept in the outbox:\n%s", order, n, logs.String())
	}
	if r, _ := d.reserve(21, 1); r.Status != 409 || r.Body["order_id"] != order {
		t.Errorf("reserving again: %+v, want 409 with order %s", r, order)
	}
	s.settled(21, 1)
	if n := s.int("SELECT stock FROM sk_items WHERE id = 21"); n != 4 {
		t.Errorf("MySQL stock %d, want 4", n)
	}
}

// TestProduceFailedOrderStored: Kafka writes the message but answers
// every attempt with REQUEST_TIMED_OUT, and the consumer stores the order
// before the producer gives up. The outcome is unknown to the API, so the
// order stays in the outbox and the answer is the 202 of a successful
// reservation, with that order: no fence, nothing released. Before the
// fence, the user got 503 while holding a live order, and the release took
// the user out of buyers.
func TestProduceFailedOrderStored(t *testing.T) {
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("produce_timeout: 10s", logTo(&logs, zerolog.WarnLevel))
	s.addItem(22, 5)
	s.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "cachesync.orders", Err: kerr.RequestTimedOut, Count: -1})
	// The first attempt is written; its retries wait for the order row,
	// so the producer gives up only after the consumer stored it.
	holdProduce(s.kafka, false, func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 22 AND status = 'created'") == 1
	})
	r, err := d.reserve(22, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve with the order stored but not acknowledged: %v %+v, want 202", err, r)
	}
	var stored string
	if err := s.db.QueryRow("SELECT order_id FROM sk_orders WHERE item_id = 22 AND user_id = 1 AND status = 'created'").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if r.Body["order_id"] != stored || r.Body["status"] != "queued" || r.Body["item_id"] != float64(22) || r.Body["user_id"] != float64(1) || r.Body["available"] != float64(4) {
		t.Errorf("202 body %s, want order %s queued, item 22, user 1, available 4", r.Raw, stored)
	}
	// The 202 came from the outbox keeping the order, not from an ack.
	if n := strings.Count(logs.String(), stored); n != 1 || !strings.Contains(logs.String(), "kept in the outbox") {
		t.Errorf("order %s in %d log lines, want 1 saying it was kept in the outbox:\n%s", stored, n, logs.String())
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 22"); n != 1 {
		t.Errorf("%d order rows, want the one stored (no fence row)", n)
	}
	s.settled(22, 1)
	if got := s.rdb.HGet(context.Background(), "sk:{22}:buyers", "1").Val(); got != stored {
		t.Errorf("buyers[1] = %q, want %s", got, stored)
	}
	if r, _ := d.reserve(22, 1); r.Status != 409 || r.Body["order_id"] != stored {
		t.Errorf("reserving again: %+v, want 409 with order %s", r, stored)
	}
	if r, _ := d.pay(1, stored); r.Status != 200 {
		t.Errorf("paying the order: %+v", r)
	}
}

// TestProduceFailedFenceFailed: an order never handed to Kafka (the
// producer's breaker, half-open, lets one probe through and refuses the
// send beside it) is fenced before its reservation is released; here the
// fence itself fails (a trigger refuses the API's fence row). The outbox
// entry is withdrawn, since nothing was sent and the user is told it
// failed, but pending and buyers stay: a copy the jobs leader could be
// producing might still become an order. The answer is 503, logged once;
// the orphan reaper fences the reservation after orphan_age and CDC
// releases it. Before, the reservation was released with no fence row: a
// late message would have created an order whose user was no longer in
// buyers.
func TestProduceFailedFenceFailed(t *testing.T) {
	const trip = 3 // seckill's breakerTrip
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("orphan_age: 5s\noutbox_age: 1m", logTo(&logs, zerolog.WarnLevel))
	s.addItem(23, 5)
	s.addItem(24, 5)
	s.exec(`CREATE TRIGGER fence_fails BEFORE INSERT ON sk_orders FOR EACH ROW
		IF NEW.status = 'canceled' AND NEW.reason = 'not accepted by kafka' THEN
			SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: the fence fails';
		END IF`)
	// Open the breaker: three produces refused (their orders wait in the
	// outbox, left alone for outbox_age).
	down := s.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "cachesync.orders", Err: kerr.NotEnoughReplicas, Count: -1})
	for u := int64(1); u <= trip; u++ {
		if r, err := d.reserve(24, u); err != nil || r.Status != 202 {
			t.Fatalf("reservation %d with Kafka refusing: %v %+v, want 202", u, err, r)
		}
	}
	if r, _ := d.reserve(24, 9); r.Status != 503 {
		t.Fatalf("reservation with the breaker open: %+v, want 503", r)
	}
	down.Remove()
	time.Sleep(2100 * time.Millisecond) // seckill's breakerOpen: then half-open
	// The probe: its produce held by the broker while the second send is refused.
	var release atomic.Bool
	holdProduce(s.kafka, true, release.Load)
	probe := make(chan reply, 1)
	go func() { r, _ := d.reserve(23, 1); probe <- r }()
	ctx := context.Background()
	s.eventually(5*time.Second, "the probe reserved", func() bool { return s.rdb.ZCard(ctx, "sk:{23}:pending").Val() == 1 })
	time.Sleep(100 * time.Millisecond) // its send under way
	r, err := d.reserve(23, 2)
	release.Store(true)
	if err != nil || r.Status != 503 {
		t.Fatalf("reserve beside the probe, the fence failing: %v %+v, want 503", err, r)
	}
	if pr := <-probe; pr.Status != 202 {
		t.Errorf("the probe: %+v, want 202", pr)
	}
	var order string
	for _, m := range s.rdb.ZRange(ctx, "sk:{23}:pending", 0, -1).Val() {
		if o, ok := strings.CutSuffix(m, ":2"); ok {
			order = o
		}
	}
	if order == "" {
		t.Fatalf("user 2's reservation not kept after a failed fence")
	}
	if got := s.rdb.HGet(ctx, "sk:{23}:buyers", "2").Val(); got != order {
		t.Errorf("buyers[2] = %q after a failed fence, want %s", got, order)
	}
	if s.rdb.HExists(ctx, "sk:{23}:outbox", order).Val() {
		t.Errorf("order %s still in the outbox: it would be produced although the user was told it failed", order)
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ?", order); n != 0 {
		t.Errorf("%d rows for order %s, want none", n, order)
	}
	loggedOnce(t, &logs, order, r.Header.Get("X-Request-Id"))
	if !strings.Contains(logs.String(), "the fence fails") {
		t.Errorf("the log does not say why the fence failed:\n%s", logs.String())
	}
	// The reaper's fence (its own reason) is not refused.
	s.eventually(30*time.Second, "the orphan reaped", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'canceled' AND reason LIKE '%orphan%'", order) == 1
	})
	s.settled(23, 1) // the probe's order
	if s.rdb.HExists(ctx, "sk:{23}:buyers", "2").Val() {
		t.Errorf("user 2 still in buyers after the reaper fenced the order")
	}
}
