package cache

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/redis/go-redis/v9"
)

// Run subscribes to the invalidation channel and drops the named keys from
// L1 until ctx is done. L1 is used only while subscribed; it is flushed on
// every (re)subscription, on a sequence gap, on a sequence going backwards
// (Redis lost its data) and on a message it cannot parse: each may hide a
// missed invalidation. A connection silent for pingEvery is probed, and
// every seqCheckEvery the seq counter is read through the ordinary client:
// a seq this subscriber has still not seen a check later means it listens
// where the writer no longer publishes (after a Sentinel failover, go-redis
// moves ordinary connections to the new master but leaves a subscription
// on the old one), so it subscribes again.
func (c *Cache) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 50 * time.Millisecond
	bo.MaxInterval = 2 * time.Second
	// Retry returns only when ctx is done: subscribe returns nil then.
	_, _ = backoff.Retry(ctx, func() (struct{}, error) {
		err := c.subscribe(ctx)
		c.live.Store(false)
		if errors.Is(err, errDetached) {
			c.flush("messages missing")
		} else {
			c.flush("disconnected")
		}
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, wait time.Duration) {
		c.log.Warn().Err(err).Dur("retry_in", wait).Msg("invalidation subscription lost; L1 disabled until resubscribed")
	}))
	return nil
}

const (
	pingEvery     = 2 * time.Second
	seqCheckEvery = time.Second
)

// errDetached: the subscription misses messages the writer published.
var errDetached = errors.New("invalidation messages published since the last check did not arrive")

func (c *Cache) subscribe(ctx context.Context) error {
	ps := c.rdb.Subscribe(ctx, c.channel)
	defer ps.Close()
	waitingPong, heard := false, time.Now()
	var base, owed int64 // seq at subscription; seq stored at the last check but not yet seen
	nextCheck := time.Now().Add(seqCheckEvery)
	for {
		if now := time.Now(); now.After(nextCheck) {
			nextCheck = now.Add(seqCheckEvery)
			stored, err := c.rdb.Get(ctx, c.ks.Seq()).Int64()
			if err == nil || errors.Is(err, redis.Nil) {
				seen := max(base, c.lastSeq.Load())
				if owed > seen {
					return fmt.Errorf("%w: seq %d stored, %d seen", errDetached, owed, seen)
				}
				owed = 0
				if stored > seen {
					owed = stored
				}
			}
		}
		msg, err := ps.ReceiveTimeout(ctx, seqCheckEvery)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !isTimeout(err) {
				return err
			}
			switch silent := time.Since(heard); {
			case waitingPong && silent >= 2*pingEvery:
				return err // no PONG within pingEvery
			case !waitingPong && silent >= pingEvery:
				if err := ps.Ping(ctx); err != nil {
					return err
				}
				waitingPong = true
			}
			continue
		}
		waitingPong, heard = false, time.Now()
		switch m := msg.(type) {
		case *redis.Subscription:
			// First subscription, or go-redis resubscribed after a
			// reconnect: anything may have been missed in between.
			c.flush("subscribed")
			c.lastSeq.Store(0)
			base, owed = 0, 0
			if n, err := c.rdb.Get(ctx, c.ks.Seq()).Int64(); err == nil {
				base = n // published before this subscription: not owed
			}
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
		// KeysB64 are the keys that are not UTF-8, in standard base64.
		KeysB64 []string `json:"keys_b64"`
	}
	err := json.Unmarshal([]byte(payload), &msg)
	for i := 0; err == nil && i < len(msg.KeysB64); i++ {
		var b []byte
		b, err = base64.StdEncoding.DecodeString(msg.KeysB64[i])
		msg.Keys = append(msg.Keys, string(b))
	}
	if err != nil || msg.Seq <= 0 {
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
