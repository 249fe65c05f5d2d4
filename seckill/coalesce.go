package seckill

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// coalescer runs a script for many concurrent callers in shared
// pipelines: each worker takes every call waiting (up to max) and sends
// them in one round trip. With one round trip per request, Redis and the
// network stack spend most of their time on syscalls; pipelined, the same
// script runs several times faster (see DESIGN.md §4).
//
// Shutdown: the workers (run) return when their context is done, each
// answering the calls it took; then shut answers every call still queued
// with errStopped, and every later do returns errStopped at once. No call
// is ever left waiting.
type coalescer struct {
	rdb    redis.UniversalClient
	script *redis.Script
	calls  chan *call
	max    int

	// quit is closed by shut: it wakes callers blocked on a full queue.
	quit     chan struct{}
	quitOnce sync.Once
	// mu orders enqueueing against shut: do enqueues under the read
	// lock, and only while closed is false; shut sets closed under the
	// write lock, so once it holds it no call can enter the queue and
	// one pass empties it for good.
	mu     sync.RWMutex
	closed bool
}

type call struct {
	ctx  context.Context
	keys []string
	args []any
	done chan struct{}
	res  any
	err  error
}

// errStopped: the coalescer's workers are gone (shutting down).
var errStopped = errors.New("reservations stopped")

func newCoalescer(rdb redis.UniversalClient, script *redis.Script, max int) *coalescer {
	return &coalescer{rdb: rdb, script: script, calls: make(chan *call, 4*max), max: max, quit: make(chan struct{})}
}

// do runs the script for keys and args as part of some pipeline. It
// returns errStopped once shut has begun; it never blocks past ctx or
// shut.
func (c *coalescer) do(ctx context.Context, keys []string, args ...any) (any, error) {
	cl := &call{ctx: ctx, keys: keys, args: args, done: make(chan struct{})}
	if err := c.enqueue(cl); err != nil {
		return nil, err
	}
	<-cl.done // a worker, or shut, always answers a queued call
	return cl.res, cl.err
}

func (c *coalescer) enqueue(cl *call) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return errStopped
	}
	select {
	case c.calls <- cl:
		return nil
	case <-cl.ctx.Done():
		return cl.ctx.Err()
	case <-c.quit:
		return errStopped
	}
}

// shut answers the calls still queued with errStopped and makes every
// later do return errStopped. Call it after the workers have returned;
// calling it twice is safe.
func (c *coalescer) shut() {
	// First wake the callers blocked on a full queue: they hold the read
	// lock, which the write lock below waits for.
	c.quitOnce.Do(func() { close(c.quit) })
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	for {
		select {
		case cl := <-c.calls:
			cl.err = errStopped
			close(cl.done)
		default:
			return // nothing can be queued any more
		}
	}
}

// run is one worker; it returns when ctx is done, answering what it took.
func (c *coalescer) run(ctx context.Context) {
	batch := make([]*call, 0, c.max)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case cl := <-c.calls:
			batch = append(batch, cl)
		}
	fill:
		for len(batch) < c.max {
			select {
			case cl := <-c.calls:
				batch = append(batch, cl)
			default:
				break fill
			}
		}
		c.exec(ctx, batch)
	}
}

func (c *coalescer) exec(ctx context.Context, batch []*call) {
	live := batch[:0:0]
	for _, cl := range batch {
		if cl.ctx.Err() != nil { // the client gave up before anything ran
			cl.err = cl.ctx.Err()
			close(cl.done)
			continue
		}
		live = append(live, cl)
	}
	for attempt := 0; attempt < 2 && len(live) > 0; attempt++ {
		pipe := c.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(live))
		for i, cl := range live {
			cmds[i] = c.script.EvalSha(context.WithoutCancel(ctx), pipe, cl.keys, cl.args...)
		}
		_, _ = pipe.Exec(context.WithoutCancel(ctx))
		var retry []*call
		for i, cl := range live {
			res, err := cmds[i].Result()
			if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") && attempt == 0 {
				retry = append(retry, cl) // Redis restarted: load and run again
				continue
			}
			cl.res, cl.err = res, err
			close(cl.done)
		}
		if len(retry) > 0 {
			if err := c.script.Load(context.WithoutCancel(ctx), c.rdb).Err(); err != nil {
				for _, cl := range retry {
					cl.err = err
					close(cl.done)
				}
				return
			}
		}
		live = retry
	}
}
