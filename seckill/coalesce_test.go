package seckill

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// TestCoalescerShutdown stops the reservation workers while callers keep
// calling, on a real Redis, many times over: every caller must get an
// answer (the script's, or errStopped) within a bound, calls after the
// stop must get errStopped at once, and nothing the coalescer started may
// be left running. Before shut existed, a call made after the workers had
// stopped could enter the queue that nobody read any more and wait
// forever, which held the HTTP server's shutdown.
func TestCoalescerShutdown(t *testing.T) {
	rs := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: 8})
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	defer rdb.Close()
	script := redis.NewScript("return 1")
	const (
		rounds  = 30
		callers = 32
		workers = 4
	)
	for round := range rounds {
		// A small queue (4 × max) that the callers keep full.
		c := newCoalescer(rdb, script, 2, nil)
		r := &Reserver{batch: c}
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		go func() { defer close(stopped); r.run(ctx, workers) }()
		var answered atomic.Int64
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for {
					// The caller's context never ends: only the
					// coalescer can let it go.
					res, err := c.do(context.Background(), []string{"k"})
					switch {
					case errors.Is(err, errStopped):
						return
					case err != nil:
						t.Errorf("round %d: call: %v", round, err)
						return
					case res != int64(1):
						t.Errorf("round %d: call answered %v, want 1", round, res)
						return
					}
					answered.Add(1)
				}
			})
		}
		deadline := time.Now().Add(10 * time.Second)
		for answered.Load() < 50 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); <-stopped; close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: callers or workers still waiting 10s after the stop (%d calls answered before)", round, answered.Load())
		}
		t0 := time.Now()
		if _, err := c.do(context.Background(), []string{"k"}); !errors.Is(err, errStopped) || time.Since(t0) > time.Second {
			t.Fatalf("round %d: call after the stop: %v after %s, want errStopped at once", round, err, time.Since(t0))
		}
		c.shut() // twice is safe
	}
}
