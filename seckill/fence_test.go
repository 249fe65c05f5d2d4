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

// TestProduceTimeoutLateMessage: Kafka acknowledges only after
// produce_timeout, and writes the message after the API fenced its
// order. The answer is 503, the reservation is released at once, and the
// late message is a duplicate when consumed: no order is created, and the
// user may buy again. The failure is one log line, the 503's, with the
// order id (before, two lines: the order's without the request id, and
// the request's without the order id).
func TestProduceTimeoutLateMessage(t *testing.T) {
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("", logTo(&logs, zerolog.WarnLevel))
	s.addItem(21, 5)
	fenced := func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 21 AND status = 'canceled'") == 1
	}
	holdProduce(s.kafka, true, fenced)
	r, err := d.reserve(21, 1)
	if err != nil || r.Status != 503 {
		t.Fatalf("reserve with the ack late: %v %+v, want 503", err, r)
	}
	ctx := context.Background()
	if n := s.rdb.ZCard(ctx, "sk:{21}:pending").Val(); n != 0 || s.rdb.HExists(ctx, "sk:{21}:buyers", "1").Val() {
		t.Errorf("after the 503: %d pending entries, user 1 in buyers %v; want the reservation released", n, s.rdb.HExists(ctx, "sk:{21}:buyers", "1").Val())
	}
	var fence string
	if err := s.db.QueryRow("SELECT order_id FROM sk_orders WHERE item_id = 21 AND status = 'canceled'").Scan(&fence); err != nil {
		t.Fatal(err)
	}
	loggedOnce(t, &logs, fence, r.Header.Get("X-Request-Id"))
	s.eventually(20*time.Second, "the late message consumed as a duplicate", func() bool {
		return metric(t, d, `cachesync_seckill_orders_consumed_total{outcome="duplicate"}`) == 1
	})
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 21 AND status <> 'canceled'"); n != 0 {
		t.Errorf("%d orders beside the fence row, want none", n)
	}
	// The fence row stays, so holdProduce holds nothing any more.
	r, err = d.reserve(21, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("user 1 buys again: %v %+v", err, r)
	}
	s.eventually(20*time.Second, "user 1's second order created", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'created'", r.Body["order_id"]) == 1
	})
	s.settled(21, 1)
	if n := s.int("SELECT stock FROM sk_items WHERE id = 21"); n != 4 {
		t.Errorf("MySQL stock %d, want 4", n)
	}
}

// TestProduceFailedOrderStored: Kafka writes the message but answers
// every attempt with REQUEST_TIMED_OUT, and the consumer stores the order
// before the producer gives up. The fence finds the row: the reservation
// is left alone and the answer is the 202 of a successful reservation,
// with that order. Before, the user got 503 while holding a live order,
// and the release took the user out of buyers.
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
	// The 202 came from the fence finding the row, not from an ack.
	if n := strings.Count(logs.String(), stored); n != 1 || !strings.Contains(logs.String(), "already stored") {
		t.Errorf("order %s in %d log lines, want 1 saying it was already stored:\n%s", stored, n, logs.String())
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

// TestProduceFailedFenceFailed: Kafka is gone and the fence itself fails
// (a trigger refuses the API's fence row). The reservation is not
// released, since a message written after all could still become an
// order; the answer is 503 and the failure is logged once. The orphan
// reaper fences it after orphan_age and CDC releases it. Before, the
// reservation was released with no fence row: a late message would have
// created an order whose user was no longer in buyers.
func TestProduceFailedFenceFailed(t *testing.T) {
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("orphan_age: 5s", logTo(&logs, zerolog.WarnLevel))
	s.addItem(23, 5)
	s.exec(`CREATE TRIGGER fence_fails BEFORE INSERT ON sk_orders FOR EACH ROW
		IF NEW.status = 'canceled' AND NEW.reason = 'not accepted by kafka' THEN
			SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: the fence fails';
		END IF`)
	s.kafka.Close()
	r, err := d.reserve(23, 1)
	if err != nil || r.Status != 503 {
		t.Fatalf("reserve with Kafka down and the fence failing: %v %+v, want 503", err, r)
	}
	ctx := context.Background()
	held, _ := s.rdb.ZRange(ctx, "sk:{23}:pending", 0, -1).Result()
	if len(held) != 1 || !strings.HasSuffix(held[0], ":1") {
		t.Fatalf("pending %v after a failed fence, want user 1's reservation kept", held)
	}
	order := strings.TrimSuffix(held[0], ":1")
	if got := s.rdb.HGet(ctx, "sk:{23}:buyers", "1").Val(); got != order {
		t.Errorf("buyers[1] = %q after a failed fence, want %s", got, order)
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 23"); n != 0 {
		t.Errorf("%d order rows, want none", n)
	}
	loggedOnce(t, &logs, order, r.Header.Get("X-Request-Id"))
	if !strings.Contains(logs.String(), "the fence fails") {
		t.Errorf("the log does not say why the fence failed:\n%s", logs.String())
	}
	// The reaper's fence (its own reason) is not refused.
	s.eventually(30*time.Second, "the orphan reaped", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'canceled' AND reason LIKE '%orphan%'", order) == 1
	})
	s.settled(23, 0)
	if s.rdb.HExists(ctx, "sk:{23}:buyers", "1").Val() {
		t.Errorf("user 1 still in buyers after the reaper fenced the order")
	}
}
