package seckill_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDeadLetter: orders that cannot be stored go to the dead-letter topic
// and the failure table, are counted, and do not stop the consumer: the
// next message of the same partition is stored and the offsets move past
// them. Three kinds: a message that is not JSON (dead-lettered at once), an
// order whose insert fails with a transient error every time (retried,
// then dead-lettered) and one whose insert fails permanently (at once).
// The failures come from a trigger on sk_orders that rejects two users;
// once it is gone the orphan reaper releases their reservations.
func TestDeadLetter(t *testing.T) {
	const item = 51
	s := newStack(t)
	d := s.start("orphan_age: 3s")
	s.addItem(item, 10)
	ctx := context.Background()
	s.exec(`CREATE TRIGGER sk_orders_reject BEFORE INSERT ON sk_orders FOR EACH ROW
BEGIN
  IF NEW.user_id = 666 THEN
    SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, MESSAGE_TEXT = 'test: lock wait timeout, always';
  END IF;
  IF NEW.user_id = 667 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: order rejected';
  END IF;
END`)

	bad := `{"order_id": 51-not json`
	part, badOff := s.produceRaw(fmt.Sprint(item), bad)
	orders := map[int64]string{}
	for _, u := range []int64{666, 667, 668} {
		r, err := d.reserve(item, u)
		if err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d: %v %+v", u, err, r)
		}
		orders[u] = r.Body["order_id"].(string)
	}
	// The order after the failures is stored: the consumer went on.
	s.eventually(30*time.Second, "user 668's order created", func() bool {
		var status string
		return s.db.QueryRow("SELECT status FROM sk_orders WHERE order_id = ?", orders[668]).Scan(&status) == nil && status == "created"
	})
	s.eventually(10*time.Second, "offsets committed past the failed messages", func() bool {
		return s.committedOffset(part) >= badOff+4
	})

	// Dead-letter topic: the three messages, as they were, with the cause.
	type dl struct{ value, errText, attempts, source string }
	got := map[string]dl{} // by order id ("" for the bad message)
	for _, m := range s.readTopic("cachesync.orders.dlq", 3, 20*time.Second) {
		e, _ := header(m, "error")
		a, _ := header(m, "attempts")
		src, _ := header(m, "source")
		if string(m.Key) != fmt.Sprint(item) {
			t.Errorf("dead letter key %q, want %q", m.Key, fmt.Sprint(item))
		}
		key := ""
		for u, o := range orders {
			if strings.Contains(string(m.Value), o) {
				key = fmt.Sprint(u)
			}
		}
		if _, dup := got[key]; dup {
			t.Errorf("two dead letters for %q", key)
		}
		got[key] = dl{value: string(m.Value), errText: e, attempts: a, source: src}
	}
	if len(got) != 3 {
		t.Fatalf("dead letters %v, want 3 (bad message, users 666 and 667)", got)
	}
	if g := got[""]; g.value != bad || g.attempts != "0" || !strings.Contains(g.errText, "order message") ||
		g.source != fmt.Sprintf("cachesync.orders/%d/%d", part, badOff) {
		t.Errorf("dead letter of the bad message: %+v", g)
	}
	if g := got["666"]; g.attempts != "3" || !strings.Contains(g.errText, "lock wait timeout, always") {
		t.Errorf("dead letter of the transiently failing order: %+v, want 3 attempts (retry.attempts)", g)
	}
	if g := got["667"]; g.attempts != "1" || !strings.Contains(g.errText, "order rejected") {
		t.Errorf("dead letter of the permanently failing order: %+v, want 1 attempt", g)
	}
	if _, ok := got["668"]; ok {
		t.Errorf("the stored order was dead-lettered too")
	}

	// Failure table: one row each.
	type fr struct {
		attempts int
		errText  string
		payload  string
	}
	fails := map[string]fr{}
	rows, err := s.db.Query("SELECT order_id, attempts, error, payload FROM sk_failures")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var o string
		var f fr
		if err := rows.Scan(&o, &f.attempts, &f.errText, &f.payload); err != nil {
			t.Fatal(err)
		}
		if _, dup := fails[o]; dup {
			t.Errorf("two failure rows for order %q", o)
		}
		fails[o] = f
	}
	rows.Close()
	if len(fails) != 3 {
		t.Errorf("failure rows %v, want 3", fails)
	}
	if f, ok := fails[""]; !ok || f.payload != bad || f.attempts != 0 {
		t.Errorf("failure row of the bad message: %+v %v", f, ok)
	}
	if f, ok := fails[orders[666]]; !ok || f.attempts != 3 || !strings.Contains(f.errText, "lock wait") {
		t.Errorf("failure row of user 666's order: %+v %v", f, ok)
	}
	if f, ok := fails[orders[667]]; !ok || f.attempts != 1 || !strings.Contains(f.errText, "rejected") {
		t.Errorf("failure row of user 667's order: %+v %v", f, ok)
	}

	// Metrics, and MySQL untouched by the failed orders.
	if v := metric(t, d, "cachesync_seckill_orders_dead_lettered_total"); v != 3 {
		t.Errorf("orders_dead_lettered_total = %v, want 3", v)
	}
	if v := metric(t, d, "cachesync_seckill_order_retries_total"); v != 2 {
		t.Errorf("order_retries_total = %v, want 2 (3 attempts: 2 retries)", v)
	}
	if n := s.int("SELECT stock FROM sk_items WHERE id = ?", item); n != 9 {
		t.Errorf("MySQL stock %d, want 9 (only user 668's order)", n)
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE user_id IN (666, 667)"); n != 0 {
		t.Errorf("%d order rows of the dead-lettered orders", n)
	}

	// Their reservations are still pending; once the trigger is gone the
	// reaper fences them and CDC releases them, and the users may buy.
	if n := s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val(); n != 2 {
		t.Errorf("pending has %d entries, want the 2 dead-lettered reservations", n)
	}
	s.exec("DROP TRIGGER sk_orders_reject")
	s.eventually(30*time.Second, "dead-lettered reservations reaped", func() bool {
		return s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val() == 0 &&
			s.int("SELECT COUNT(*) FROM sk_orders WHERE user_id IN (666, 667) AND status = 'canceled'") == 2
	})
	r, err := d.reserve(item, 666)
	if err != nil || r.Status != 202 {
		t.Fatalf("user 666 after the reaper: %v %+v", err, r)
	}
	s.eventually(20*time.Second, "user 666's new order created", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE user_id = 666 AND status = 'created'") == 1
	})
}
