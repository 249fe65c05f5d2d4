package seckill_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// partitionOf is the order topic's partition of item (8 partitions, keyed
// by item id as the daemon's producer does).
func partitionOf(t *testing.T, item int64) int32 {
	t.Helper()
	p, err := sarama.NewHashPartitioner("cachesync.orders").Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(strconv.FormatInt(item, 10))}, 8)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// neighbour is an item id above item whose orders share item's partition.
func neighbour(t *testing.T, item int64) int64 {
	t.Helper()
	for b := item + 1; ; b++ {
		if partitionOf(t, b) == partitionOf(t, item) {
			return b
		}
	}
}

// TestNewItemLiveWithoutConsumer: with no consumer running and an order of
// another item waiting in the new item's partition, a new item still goes
// live: its first rebuild finds none of its own orders in Kafka and does not
// wait for the consumer (before, it waited for the whole partition to be
// consumed, up to its 5-minute bound).
func TestNewItemLiveWithoutConsumer(t *testing.T) {
	const item = 71
	s := newStack(t)
	d := s.start("roles: [api, jobs]") // no consumer anywhere
	other := neighbour(t, item)
	s.addItem(other, 10)
	if r, err := d.reserve(other, 1); err != nil || r.Status != 202 {
		t.Fatalf("reserve item %d: %v %d %s", other, err, r.Status, r.Raw)
	}
	// The order is in Kafka, not consumed.
	time.Sleep(500 * time.Millisecond)
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", other); n != 0 {
		t.Fatalf("%d orders of item %d stored with no consumer", n, other)
	}

	start := time.Now()
	s.exec("INSERT INTO sk_items (id, name, stock) VALUES (?, 'new item', 5)", item)
	s.eventually(20*time.Second, "a reservation of the new item accepted", func() bool {
		r, err := d.reserve(item, 2)
		return err == nil && r.Status == 202
	})
	t.Logf("new item live %s after its INSERT, with the consumer down", time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	if v, _ := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64(); v != 5 {
		t.Errorf("stock %d, want 5", v)
	}
	if n := s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val(); n != 1 {
		t.Errorf("%d pending, want 1", n)
	}
	if n := s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", other)).Val(); n != 1 {
		t.Errorf("item %d: %d pending, want its unconsumed order", other, n)
	}
}

// TestRebuildWaitsForItsOrders: an item whose orders are still in Kafka,
// unconsumed, is not rebuilt before they are stored, even when nothing of
// them is left in MySQL or Redis: its stock is sold out by two reservations
// (orders in Kafka, no consumer), then Redis loses the item's keys. A
// rebuild from MySQL alone would find stock 2 and nothing pending and sell
// both units again; it must wait (503) until a consumer stored the two
// orders, then the item is sold out (410), with exactly two orders.
func TestRebuildWaitsForItsOrders(t *testing.T) {
	const item = 72
	s := newStack(t)
	d := s.start("roles: [api, jobs]")
	s.addItem(item, 2)
	for u := int64(1); u <= 2; u++ {
		if r, err := d.reserve(item, u); err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d: %v %d %s", u, err, r.Status, r.Raw)
		}
	}
	ctx := context.Background()
	k := fmt.Sprintf("sk:{%d}:", item)
	if err := s.rdb.Del(ctx, k+"ready", k+"stock", k+"pending", k+"buyers").Err(); err != nil {
		t.Fatal(err)
	}
	// Well past the rebuild's produce grace (1 s) and a job tick (200 ms).
	deadline := time.Now().Add(4 * time.Second)
	for u := int64(3); time.Now().Before(deadline); u++ {
		r, err := d.reserve(item, u)
		if err != nil || r.Status != 503 {
			t.Fatalf("reserve user %d with the item's orders unconsumed: %v %d %s, want 503", u, err, r.Status, r.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.start("roles: [consumer]")
	s.eventually(30*time.Second, "the item rebuilt as sold out", func() bool {
		r, err := d.reserve(item, 100)
		if err == nil && r.Status == 202 {
			t.Fatalf("reservation accepted: the item is oversold")
		}
		return err == nil && r.Status == 410
	})
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ?", item); n != 2 {
		t.Errorf("%d orders, want 2", n)
	}
	if n := s.int("SELECT stock FROM sk_items WHERE id = ?", item); n != 0 {
		t.Errorf("MySQL stock %d, want 0", n)
	}
}
