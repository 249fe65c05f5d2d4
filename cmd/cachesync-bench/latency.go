package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/sink"
)

// latencyResult is the commit → invalidation message latency at a fixed
// offered load. Latencies are taken as measured: a negative one (the
// message arriving before the clock read just before COMMIT) would be a
// clock or a bench bug and is counted, never clamped to 0.
type latencyResult struct {
	n                  int
	offered, achieved  float64 // transactions/s: the schedule's, and what the writers committed
	min, p50, p99, max time.Duration
	negative           int
}

// latency offers rate single-row INSERT transactions per second for d
// from 16 writers on a fixed schedule (a writer that falls behind sends
// at once until it is on time again), and measures from just before each
// COMMIT is sent to the invalidation message naming its key.
func (e *env) latency(ctx context.Context, rate int, d time.Duration) (latencyResult, error) {
	res := latencyResult{offered: float64(rate)}
	if _, err := e.db.ExecContext(ctx, "CREATE TABLE bench.lat (id INT PRIMARY KEY, at BIGINT NOT NULL)"); err != nil {
		return res, err
	}
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return res, err
	}
	p, _, err := e.newPipeline(sink.Config{Rules: []sink.RuleConfig{{Table: "bench.lat", Kind: sink.KindInvalidate, Keys: []string{"lat:{id}"}}}},
		e.rdb, binlog.StartConfig{From: binlog.FromCurrent})
	if err != nil {
		return res, err
	}
	sub := e.rdb.Subscribe(ctx, "cachesync:invalidations")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for p.Ready() != nil {
		time.Sleep(10 * time.Millisecond)
	}

	var mu sync.Mutex
	committing := map[int]time.Time{}
	received := map[int]time.Time{}
	go func() {
		for m := range sub.Channel() {
			now := time.Now()
			var msg struct{ Keys []string }
			if json.Unmarshal([]byte(m.Payload), &msg) != nil {
				continue
			}
			mu.Lock()
			for _, k := range msg.Keys {
				if id, err := strconv.Atoi(strings.TrimPrefix(k, "lat:")); err == nil {
					received[id] = now
				}
			}
			mu.Unlock()
		}
	}()
	const writers = 16
	total := int(float64(rate) * d.Seconds())
	interval := time.Duration(float64(time.Second) * writers / float64(rate))
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	t0 := time.Now()
	for w := range writers {
		wg.Go(func() {
			conn, err := e.db.Conn(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			for i, k := w, 0; i < total; i, k = i+writers, k+1 {
				time.Sleep(time.Until(t0.Add(time.Duration(k) * interval)))
				if _, err := conn.ExecContext(ctx, fmt.Sprintf("BEGIN; INSERT INTO bench.lat VALUES (%d, %d)", i, time.Now().UnixNano())); err != nil {
					errs <- err
					return
				}
				at := time.Now()
				mu.Lock()
				committing[i] = at
				mu.Unlock()
				if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	res.achieved = float64(total) / time.Since(t0).Seconds()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(received)
		mu.Unlock()
		if n >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var lats []time.Duration
	for id, c := range committing {
		if r, ok := received[id]; ok {
			lats = append(lats, r.Sub(c))
		}
	}
	if len(lats) < total {
		return res, fmt.Errorf("latency run: %d of %d transactions never announced", total-len(lats), total)
	}
	slices.Sort(lats)
	res.n = len(lats)
	res.min, res.max = lats[0], lats[len(lats)-1]
	res.p50, res.p99 = percentile(lats, 50), percentile(lats, 99)
	for _, l := range lats {
		if l < 0 {
			res.negative++
		}
	}
	return res, nil
}
