package seckill_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestConcurrentSale: 10,000 concurrent reservations from 3,000 users on
// an item with stock 100 end with exactly 100 orders in MySQL, stock 0,
// no user with two orders, and Redis available 0.
func TestConcurrentSale(t *testing.T) {
	s := newStack(t)
	d := s.start("")
	s.addItem(1, 100)

	const requests, users, workers = 10_000, 3_000, 64
	var mu sync.Mutex
	codes := map[int]int{}
	orders := map[string]int64{} // order → user, from 202 answers
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				user := int64(i%users + 1)
				r, err := d.reserve(1, user)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				codes[r.Status]++
				if r.Status == 202 {
					orders[r.Body["order_id"].(string)] = user
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < requests; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("answers: %v", codes)
	if codes[202] != 100 {
		t.Fatalf("%d reservations accepted, want exactly 100 (answers %v)", codes[202], codes)
	}
	if codes[202]+codes[409]+codes[410] != requests {
		t.Fatalf("unexpected answers: %v", codes)
	}
	s.eventually(60*time.Second, "100 orders stored", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 1") == 100
	})
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 1 AND status = 'created'"); n != 100 {
		t.Errorf("%d created orders, want 100", n)
	}
	if n := s.int("SELECT stock FROM sk_items WHERE id = 1"); n != 0 {
		t.Errorf("MySQL stock %d, want 0", n)
	}
	if n := s.int("SELECT COUNT(*) FROM (SELECT user_id FROM sk_orders WHERE item_id = 1 GROUP BY user_id HAVING COUNT(*) > 1) x"); n != 0 {
		t.Errorf("%d users hold two orders", n)
	}
	for o, u := range orders {
		if got := s.int("SELECT user_id FROM sk_orders WHERE order_id = ?", o); got != u {
			t.Errorf("order %s: user %d, want %d", o, got, u)
		}
	}
	ctx := context.Background()
	s.eventually(30*time.Second, "Redis available 0 with nothing pending", func() bool {
		stock, _ := s.rdb.Get(ctx, "sk:{1}:stock").Int64()
		pending := s.rdb.ZCard(ctx, "sk:{1}:pending").Val()
		return stock == 0 && pending == 0
	})
	if n := s.rdb.HLen(ctx, "sk:{1}:buyers").Val(); n != 100 {
		t.Errorf("buyers has %d users, want 100", n)
	}
	// Sold out now: answered 410, by the local flag after the first.
	for i := 0; i < 10; i++ {
		r, err := d.reserve(1, int64(10_000+i))
		if err != nil || r.Status != 410 {
			t.Fatalf("after sell-out: %v %+v", err, r)
		}
	}
	_ = fmt.Sprint()
}
