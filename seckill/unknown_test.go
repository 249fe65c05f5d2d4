package seckill_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/rs/zerolog"
)

// knownSetTrusted waits until the daemon can trust its known-items set:
// it holds item and the sink's snapshot of sk_items is done.
func (s *stack) knownSetTrusted(item int64) {
	s.t.Helper()
	ctx := context.Background()
	s.eventually(30*time.Second, "the known-items set complete", func() bool {
		return s.rdb.SIsMember(ctx, "sk:items", item).Val() &&
			s.rdb.HGet(ctx, s.ks.SnapshotProgress(), "shop.sk_items").Val() == "done"
	})
}

// goroutinesBackTo waits until the process runs at most max goroutines,
// idle HTTP connections closed; it returns the last count.
func goroutinesBackTo(max int, within time.Duration) int {
	deadline := time.Now().Add(within)
	for {
		client.CloseIdleConnections()
		n := runtime.NumGoroutine()
		if n <= max || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUnknownItems fires 1,000 concurrent reservations at made-up item
// ids: each must answer 404 {"error":"unknown item", request_id} at once,
// start nothing (the process's goroutines come back to where they were
// well before a rebuild's produce_timeout wait could have ended), log
// nothing, and be counted in cachesync_seckill_unknown_items_total. The
// same holds for GET /seckill/items/{id}, and for an item deleted from
// MySQL once CDC has applied the DELETE. Before the known-items set, each
// of them answered 503 "not ready" with Retry-After and started a rebuild
// goroutine (waiting produce_timeout, 10 s here) that ended in an error
// line.
func TestUnknownItems(t *testing.T) {
	const (
		n     = 1000
		first = 900000 // made-up ids: first … first+n-1
	)
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("produce_timeout: 10s", logTo(&logs, zerolog.WarnLevel))
	// Two real items, rebuilt together (each rebuild waits 10 s); item 2
	// is deleted below.
	ctx := context.Background()
	s.exec("INSERT INTO sk_items (id, name, stock) VALUES (1, 'one', 10), (2, 'two', 5)")
	s.eventually(60*time.Second, "items 1 and 2 ready", func() bool {
		// One key per call: the items' keys are in different slots on a cluster.
		return s.rdb.Exists(ctx, "sk:{1}:ready").Val() == 1 && s.rdb.Exists(ctx, "sk:{2}:ready").Val() == 1
	})
	s.knownSetTrusted(1)
	baseline := goroutinesBackTo(0, 0)
	tokens := make([][]string, n)
	for i := range tokens {
		tokens[i] = asUser(int64(10 + i))
	}

	statuses := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			r, err := call("POST", fmt.Sprintf("%s/seckill/items/%d/reservations", d.base, first+i), "", tokens[i]...)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("reserve item %d: %v", first+i, err)
				return
			}
			statuses[r.Status]++
			if r.Status == 404 && statuses[404] == 1 {
				wantErrorBody(t, r)
				if r.Body["error"] != "unknown item" || r.Header.Get("Retry-After") != "" {
					t.Errorf("404: %s, Retry-After %q; want {\"error\":\"unknown item\"} and no Retry-After", r.Raw, r.Header.Get("Retry-After"))
				}
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d reservations of made-up ids in %s: %v; goroutines before %d", n, time.Since(t0).Round(time.Millisecond), statuses, baseline)
	if statuses[404] != n {
		t.Errorf("answers %v, want %d × 404", statuses, n)
	}
	// The HTTP connections' goroutines end with the connections; a rebuild
	// started per request would still be waiting its 10 s.
	if got := goroutinesBackTo(baseline+50, 3*time.Second); got > baseline+50 {
		t.Errorf("%d goroutines 3s after the burst, %d before: something was started per request", got, baseline)
	}
	if v := metric(t, d, `cachesync_seckill_unknown_items_total{endpoint="reservation"}`); v != n {
		t.Errorf(`cachesync_seckill_unknown_items_total{endpoint="reservation"} = %v, want %d`, v, n)
	}
	if v := metric(t, d, `cachesync_seckill_reservations_total{result="unknown_item"}`); v != n {
		t.Errorf(`cachesync_seckill_reservations_total{result="unknown_item"} = %v, want %d`, v, n)
	}

	// GET of a made-up id.
	if r, err := call("GET", fmt.Sprintf("%s/seckill/items/%d", d.base, first), ""); err != nil || r.Status != 404 || r.Body["error"] != "unknown item" {
		t.Errorf("GET a made-up item: %v %+v, want 404 unknown item", err, r)
	}
	if v := metric(t, d, `cachesync_seckill_unknown_items_total{endpoint="item"}`); v != 1 {
		t.Errorf(`cachesync_seckill_unknown_items_total{endpoint="item"} = %v, want 1`, v)
	}

	// A deleted item is unknown as soon as CDC applied the DELETE (its
	// ready marker stays behind; its stock key goes).
	s.exec("DELETE FROM sk_items WHERE id = 2")
	s.eventually(10*time.Second, "item 2 out of the known-items set", func() bool {
		return !s.rdb.SIsMember(ctx, "sk:items", 2).Val()
	})
	if r, err := d.reserve(2, 3); err != nil || r.Status != 404 {
		t.Errorf("reserve a deleted item: %v %+v, want 404", err, r)
	}
	if r, err := call("GET", d.base+"/seckill/items/2", ""); err != nil || r.Status != 404 {
		t.Errorf("GET a deleted item: %v %+v, want 404", err, r)
	}
	if v := metric(t, d, "cachesync_seckill_rebuild_errors_total"); v != 0 {
		t.Errorf("cachesync_seckill_rebuild_errors_total = %v, want 0", v)
	}
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if strings.Contains(l, `"level":"error"`) || strings.Contains(l, "rebuild") {
			t.Errorf("log line: %s", l)
		}
	}
}

// TestNewItemKnownAtOnce: an item inserted into MySQL is never answered
// 404 once CDC has applied its INSERT (the known-items set is written in
// the same batch as its stock key): reservations sent in a loop from
// before the INSERT may get 404 before that instant, then only 503 (keys
// being built) until the first 202.
func TestNewItemKnownAtOnce(t *testing.T) {
	const item = 7
	s := newStack(t)
	d := s.start("")
	s.addItem(1, 1)
	s.knownSetTrusted(1)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu        sync.Mutex
		appliedAt time.Time // when the stock key was first seen
	)
	wg.Go(func() {
		for ctx.Err() == nil {
			if s.rdb.Exists(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Val() == 1 {
				known := s.rdb.SIsMember(ctx, "sk:items", item).Val()
				mu.Lock()
				appliedAt = time.Now()
				mu.Unlock()
				if !known {
					t.Errorf("stock key of item %d written without its known-items member", item)
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	applied := func() (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		return appliedAt, !appliedAt.IsZero()
	}
	counts := map[int]int{}
	inserted := false
	for user := int64(1); ; user++ {
		if ctx.Err() != nil {
			t.Fatalf("no 202 for item %d within 60s: answers %v", item, counts)
		}
		if user == 20 {
			s.exec("INSERT INTO sk_items (id, name, stock) VALUES (?, 'new', 3)", item)
			inserted = true
		}
		time.Sleep(5 * time.Millisecond) // pace: this is not a load test
		sent := time.Now()
		r, err := d.reserve(item, user)
		if err != nil {
			t.Fatal(err)
		}
		counts[r.Status]++
		at, ok := applied()
		switch {
		case r.Status == 202:
			if !inserted || !ok {
				t.Fatalf("202 before the item was applied: %+v", r)
			}
			t.Logf("answers %v; 202 %s after CDC applied the INSERT", counts, time.Since(at).Round(time.Millisecond))
			return
		case r.Status == 404 && ok && sent.After(at):
			t.Fatalf("404 for item %d sent %s after CDC applied its INSERT: %s", item, sent.Sub(at), r.Raw)
		case r.Status == 404, r.Status == 503:
		default:
			t.Fatalf("reserve: %d %s", r.Status, r.Raw)
		}
	}
}

// TestKnownSetLost: with the known-items set gone from Redis (deleted
// alone; Redis losing everything is TestRedisLoss*), a real item that is
// not ready is looked up in MySQL: 503 while its keys are rebuilt, then
// 202, never 404; a made-up id is still 404, from MySQL. Both lookups are
// counted in cachesync_seckill_item_lookups_total.
func TestKnownSetLost(t *testing.T) {
	s := newStack(t)
	d := s.start("")
	ctx := context.Background()
	s.addItem(4, 5)
	s.knownSetTrusted(4)
	for _, key := range []string{"sk:items", "sk:{4}:ready"} { // two slots on a cluster
		if err := s.rdb.Del(ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := d.reserve(4, 1)
	if err != nil || r.Status != 503 {
		t.Fatalf("reserve item 4, set and ready marker gone: %v %+v, want 503", err, r)
	}
	s.eventually(30*time.Second, "item 4 reservable again", func() bool {
		r, err = d.reserve(4, 1)
		if err == nil && r.Status == 404 {
			t.Fatalf("item 4 answered 404 while the known-items set was gone: %s", r.Raw)
		}
		return err == nil && r.Status == 202
	})
	if r, err := d.reserve(900001, 2); err != nil || r.Status != 404 {
		t.Errorf("made-up id with the set gone: %v %+v, want 404", err, r)
	}
	if v := metric(t, d, `cachesync_seckill_item_lookups_total{result="known"}`); v < 1 {
		t.Errorf(`item_lookups_total{result="known"} = %v, want ≥ 1`, v)
	}
	if v := metric(t, d, `cachesync_seckill_item_lookups_total{result="unknown"}`); v != 1 {
		t.Errorf(`item_lookups_total{result="unknown"} = %v, want 1`, v)
	}
}
