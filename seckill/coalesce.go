package seckill

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// coalescer runs a script for many concurrent callers in shared
// pipelines: each worker takes every call waiting (up to max) and sends
// them in one round trip. With one round trip per request, Redis and the
// network stack spend most of their time on syscalls; pipelined, the same
// script runs several times faster (see DESIGN.md §4).
type coalescer struct {
	rdb    redis.UniversalClient
	script *redis.Script
	calls  chan *call
	max    int
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
	return &coalescer{rdb: rdb, script: script, calls: make(chan *call, 4*max), max: max}
}

// do runs the script for keys and args as part of some pipeline.
func (c *coalescer) do(ctx context.Context, stop <-chan struct{}, keys []string, args ...any) (any, error) {
	cl := &call{ctx: ctx, keys: keys, args: args, done: make(chan struct{})}
	select {
	case c.calls <- cl:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-stop:
		return nil, errStopped
	}
	<-cl.done // a worker always answers a call it took
	return cl.res, cl.err
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
