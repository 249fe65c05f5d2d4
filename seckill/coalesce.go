package seckill

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// coalescer runs a script for many concurrent callers in shared
// pipelines: each worker takes every call waiting (up to max) and sends
// them in one round trip. With one round trip per request, Redis and the
// network stack spend most of their time on syscalls; pipelined, the same
// script runs several times faster (see DESIGN.md §4). Other scripts can
// ride along (post): the outbox acknowledgements share the reservations'
// round trips instead of paying their own.
//
// Shutdown: the workers (run) return when their context is done, each
// answering the calls it took; then shut answers every call still queued
// with errStopped, and every later do or post returns errStopped at once.
// No call is ever left waiting; a posted call still queued is dropped.
type coalescer struct {
	rdb    redis.UniversalClient
	script *redis.Script
	calls  chan *call
	max    int
	// sizes, when set, observes the number of calls of script (do's
	// calls, not post's) in each pipeline.
	sizes prometheus.Observer

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
	ctx    context.Context
	script *redis.Script // nil: the coalescer's
	keys   []string
	args   []any
	done   chan struct{} // nil: posted, nobody waits for the answer
	res    any
	err    error
}

// answer hands a call its result.
func (cl *call) answer(res any, err error) {
	cl.res, cl.err = res, err
	if cl.done != nil {
		close(cl.done)
	}
}

// errStopped: the coalescer's workers are gone (shutting down).
var errStopped = errors.New("reservations stopped")

// newCoalescer pipelines script (and the scripts posted) in batches of at
// most max calls; sizes, if not nil, observes how many calls of script
// each batch carried.
func newCoalescer(rdb redis.UniversalClient, script *redis.Script, max int, sizes prometheus.Observer) *coalescer {
	return &coalescer{rdb: rdb, script: script, calls: make(chan *call, 4*max), max: max, sizes: sizes, quit: make(chan struct{})}
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

// post queues script for keys and args in one of the next pipelines, with
// the calls of do, and returns without waiting for it to run: for a write
// whose failure the caller would only log, and whose round trip is then
// shared with the calls already going to Redis. It blocks only while the
// queue is full, never past ctx or shut; errStopped once shut has begun,
// and a call queued when shut comes is dropped.
func (c *coalescer) post(ctx context.Context, script *redis.Script, keys []string, args ...any) error {
	return c.enqueue(&call{ctx: ctx, script: script, keys: keys, args: args})
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
			cl.answer(nil, errStopped)
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
	own := 0
	for _, cl := range batch {
		if err := cl.ctx.Err(); err != nil { // the client gave up before anything ran
			cl.answer(nil, err)
			continue
		}
		if cl.script == nil {
			own++
		}
		live = append(live, cl)
	}
	if c.sizes != nil && own > 0 {
		c.sizes.Observe(float64(own))
	}
	for attempt := 0; attempt < 2 && len(live) > 0; attempt++ {
		pipe := c.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(live))
		for i, cl := range live {
			cmds[i] = c.scriptOf(cl).EvalSha(context.WithoutCancel(ctx), pipe, cl.keys, cl.args...)
		}
		_, _ = pipe.Exec(context.WithoutCancel(ctx))
		var retry []*call
		for i, cl := range live {
			res, err := cmds[i].Result()
			if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") && attempt == 0 {
				retry = append(retry, cl) // Redis restarted: load and run again
				continue
			}
			cl.answer(res, err)
		}
		if len(retry) == 0 {
			return
		}
		loaded := map[*redis.Script]error{}
		for _, cl := range retry {
			s := c.scriptOf(cl)
			if _, ok := loaded[s]; !ok {
				loaded[s] = s.Load(context.WithoutCancel(ctx), c.rdb).Err()
			}
		}
		live = retry[:0]
		for _, cl := range retry {
			if err := loaded[c.scriptOf(cl)]; err != nil {
				cl.answer(nil, err)
				continue
			}
			live = append(live, cl)
		}
	}
}

func (c *coalescer) scriptOf(cl *call) *redis.Script {
	if cl.script != nil {
		return cl.script
	}
	return c.script
}
