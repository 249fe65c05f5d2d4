package cache

import (
	"context"
	"encoding/json"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"
)

// Run subscribes to the invalidation channel and drops the named keys from
// L1 until ctx is done. L1 is used only while subscribed; it is flushed on
// every (re)subscription, on a sequence gap, on a sequence going backwards
// (Redis lost its data) and on a message it cannot parse: each may hide a
// missed invalidation. A connection silent for pingEvery is probed.
func (c *Cache) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 50 * time.Millisecond
	bo.MaxInterval = 2 * time.Second
	bo.MaxElapsedTime = 0
	for ctx.Err() == nil {
		err := c.subscribe(ctx)
		c.live.Store(false)
		c.flush("disconnected")
		if ctx.Err() != nil {
			break
		}
		wait := bo.NextBackOff()
		c.log.Warn().Err(err).Dur("retry_in", wait).Msg("invalidation subscription lost; L1 disabled until resubscribed")
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

const pingEvery = 2 * time.Second

func (c *Cache) subscribe(ctx context.Context) error {
	ps := c.rdb.Subscribe(ctx, c.channel)
	defer ps.Close()
	waitingPong := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isTimeout(err) && !waitingPong {
				if err := ps.Ping(ctx); err != nil {
					return err
				}
				waitingPong = true
				continue
			}
			return err
		}
		waitingPong = false
		switch m := msg.(type) {
		case *redis.Subscription:
			// First subscription, or go-redis resubscribed after a
			// reconnect: anything may have been missed in between.
			c.flush("subscribed")
			c.lastSeq.Store(0)
			c.live.Store(true)
		case *redis.Message:
			c.handle(m.Payload)
		}
	}
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	t, ok := err.(timeout)
	return ok && t.Timeout()
}

func (c *Cache) handle(payload string) {
	var msg struct {
		Seq  int64    `json:"seq"`
		Keys []string `json:"keys"`
	}
	if err := json.Unmarshal([]byte(payload), &msg); err != nil || msg.Seq <= 0 {
		c.log.Warn().Str("payload", payload).Msg("unreadable invalidation message")
		c.flush("bad message")
		return
	}
	last := c.lastSeq.Load()
	switch {
	case last != 0 && msg.Seq <= last:
		c.flush("sequence went back")
	case last != 0 && msg.Seq != last+1:
		c.flush("sequence gap")
	}
	e := c.epoch.Add(1)
	for _, k := range msg.Keys {
		c.slot[c.slotOf(k)].Store(e)
		if c.l1 != nil {
			c.l1.Invalidate(k)
		}
	}
	c.m.invalidated.Add(float64(len(msg.Keys)))
	c.notify(msg.Keys, false)
	c.lastSeq.Store(msg.Seq) // last: once seen, the message is fully handled
}

// Listen registers fn to be told, after L1, of every invalidation message
// (flush false) and of every flush (keys nil, flush true): other local
// state derived from Redis (e.g. seckill's sold-out flags) follows the
// same channel with the same guarantees. fn runs on the subscriber's
// goroutine and must not block.
func (c *Cache) Listen(fn func(keys []string, flush bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listeners = append(c.listeners, fn)
}

func (c *Cache) notify(keys []string, flush bool) {
	c.mu.Lock()
	ls := c.listeners
	c.mu.Unlock()
	for _, fn := range ls {
		fn(keys, flush)
	}
}

// flush drops every L1 entry and fences loads that began before it.
func (c *Cache) flush(reason string) {
	c.flushAt.Store(c.epoch.Add(1))
	if c.l1 != nil {
		c.l1.InvalidateAll()
	}
	c.notify(nil, true)
	c.m.flushes.WithLabelValues(reason).Inc()
}

// Live reports whether L1 is in use (subscribed to invalidations).
func (c *Cache) Live() bool { return c.live.Load() }
