package seckill_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill"
	"github.com/rs/zerolog"
)

// TestRebuildBusyDatabase: a rebuild goes live promptly while another
// table is written without pause. Each of those writes moves the CDC
// checkpoint past the rebuild's MySQL read; a guard on the global
// checkpoint retried at every attempt and gave up after 100 of them
// (issue 13, item 4). The guard is the item's own keys, which those
// writes never touch, so the first attempt goes through.
func TestRebuildBusyDatabase(t *testing.T) {
	s := newStack(t)
	s.exec("CREATE TABLE busy (id INT NOT NULL PRIMARY KEY, n BIGINT NOT NULL)")
	s.exec("INSERT INTO busy VALUES (0, 0), (1, 0), (2, 0), (3, 0)")
	d := s.start("roles: [api, consumer]")
	k := newDriftKit(t, s, d)
	ctx := context.Background()
	k.addItem(t, 61, 5)
	order := k.buy(t, 61, 1)
	keys := seckill.KeysFor(k.cfg.KeyPrefix, 61)
	s.rdb.Set(ctx, keys.Stock, 9, 0) // drift, for the rebuild to repair

	var writes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for id := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.db.Exec("UPDATE busy SET n = n + 1 WHERE id = ?", id); err != nil {
					t.Errorf("busy writer: %v", err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	driftEventually(t, 10*time.Second, "the busy table written", func() bool { return writes.Load() >= 200 })

	// A rebuilder of its own, to read the attempts it logs.
	var logs testenv.LogBuffer
	ks := d.cfg.Sink.Keyspace()
	rb, err := seckill.NewRebuilder(k.cfg, ks, d.cfg.Sink.Channel, s.rdb, k.db, seckill.NewStore(k.db, k.cfg.Database), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w0, start := writes.Load(), time.Now()
	err = rb.Rebuild(rctx, 61)
	took := time.Since(start)
	rate := float64(writes.Load()-w0) / took.Seconds()
	t.Logf("rebuild under %.0f unrelated transactions/s took %s (produce grace %s included)", rate, took.Round(time.Millisecond), k.cfg.ProduceTimeout)
	if err != nil {
		t.Fatalf("rebuild while another table is busy: %v (after %s)", err, took.Round(time.Millisecond))
	}
	// Nothing changed the item's keys meanwhile: one attempt, not one per
	// write elsewhere that CDC applied during it.
	if !strings.Contains(logs.String(), `"attempts":1,`) {
		t.Errorf("rebuild retried while only another table changed:\n%s", logs.String())
	}
	if limit := k.cfg.ProduceTimeout + 5*time.Second; took > limit {
		t.Errorf("rebuild took %s, want under %s", took.Round(time.Millisecond), limit)
	}
	if v, err := s.rdb.Get(ctx, keys.Stock).Int64(); err != nil || v != 4 {
		t.Errorf("Redis stock %d (%v) after the rebuild, want MySQL's 4", v, err)
	}
	if b := k.hash(t, keys.Buyers); len(b) != 1 || b["1"] != order {
		t.Errorf("buyers after the rebuild: %v, want 1 → %s", b, order)
	}
	if r, err := d.reserve(61, 2); err != nil || r.Status != 202 {
		t.Fatalf("reserve after the rebuild: %v %d %s", err, r.Status, r.Raw)
	}
}
