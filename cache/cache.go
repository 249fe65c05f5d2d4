// Package cache is the read path applications use: L1 (in process, otter)
// → L2 (Redis) → the loader (the database), such that a fill can never
// write stale data back.
//
// The race it closes (seed 000): a reader misses, reads the old row, the
// writer commits and the cache is invalidated, then the reader writes the
// old row into the cache where it stays until its TTL. Here a reader takes
// a lease in Redis (cachesync:lease:K) BEFORE reading the database and
// fills only if the lease still holds; cachesync's sink deletes the lease
// with every invalidation of K, so a fill that read the database before
// the change is refused. One level up, L1 drops keys named by the sink's
// invalidation messages, flushes everything when a message may have been
// missed (sequence gap, reconnect), and never keeps a value whose load
// overlapped an invalidation of its key.
//
// Keys read through this package should be ruled by an invalidate rule;
// keys that cachesync writes itself (rewrite, mirror) need no loader.
package cache

import (
	"context"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
)

// Source says where a value came from.
type Source string

// Value sources.
const (
	FromL1 Source = "L1"
	FromL2 Source = "L2"
	FromDB Source = "DB"
)

// ErrNotFound is returned by Get when the loader found no value (and that
// answer may come from the cache).
var ErrNotFound = errors.New("not found")

// Loader reads a value from the source of truth. found=false means there is
// no such value (cached briefly to stop cache penetration).
type Loader func(ctx context.Context) (value []byte, found bool, err error)

// notFound is the L2 value standing for "the loader found nothing".
const notFound = "\x00cachesync:not-found"

//go:embed read.lua
var readLua string

//go:embed fill.lua
var fillLua string

// slots is the number of per-key-hash invalidation epochs kept for the
// L1 overlap check; collisions only cost a skipped L1 put.
const slots = 1 << 14

// Cache is the two-level read path. Run must be running for L1 to be used.
type Cache struct {
	cfg     Config
	ks      keyspace.Keyspace
	channel string
	rdb     redis.UniversalClient
	log     zerolog.Logger
	m       *metrics
	l1      *otter.Cache[string, entry]
	sf      singleflight.Group
	read    *redis.Script
	fill    *redis.Script
	seed    maphash.Seed

	// Invalidation bookkeeping, written by Run, read by Get.
	epoch   atomic.Uint64        // bumped per message and per flush
	flushAt atomic.Uint64        // epoch of the last flush
	slot    [slots]atomic.Uint64 // epoch of the last invalidation per key hash
	live    atomic.Bool          // subscribed: L1 may be filled
	lastSeq atomic.Int64

	mu        sync.Mutex
	listeners []func(keys []string, flush bool)
}

type entry struct {
	val   []byte
	found bool
}

// result of one fetch, shared by singleflight callers.
type result struct {
	entry
	src Source
	e0  uint64 // epoch when the fetch began
	// stale: the fill was refused, so an invalidation came after the
	// load's lease was taken and the load may predate the change. Not
	// kept in L1 even if the invalidation message has not arrived yet (on
	// a Redis Cluster the lease goes before the message is published).
	stale bool
}

// New builds a read path over rdb. ks and channel must match the sink's
// key prefix and invalidation channel.
func New(cfg Config, rdb redis.UniversalClient, ks keyspace.Keyspace, channel string, log zerolog.Logger, reg prometheus.Registerer) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cache{
		cfg: cfg, ks: ks, channel: channel, rdb: rdb, log: log,
		m:    newMetrics(reg),
		read: redis.NewScript(readLua),
		fill: redis.NewScript(fillLua),
		seed: maphash.MakeSeed(),
	}
	if cfg.L1Size > 0 {
		l1, err := otter.New(&otter.Options[string, entry]{
			MaximumSize:      cfg.L1Size,
			ExpiryCalculator: otter.ExpiryWriting[string, entry](cfg.L1TTL),
		})
		if err != nil {
			return nil, fmt.Errorf("l1: %w", err)
		}
		c.l1 = l1
	}
	return c, nil
}

// Get returns the value of key: from L1, else Redis, else load (whose
// answer is filled into Redis under a lease, and into L1 if no
// invalidation of key overlapped the load). It returns ErrNotFound when
// the value does not exist.
func (c *Cache) Get(ctx context.Context, key string, load Loader) ([]byte, Source, error) {
	if c.l1 != nil {
		if e, ok := c.l1.GetIfPresent(key); ok {
			c.m.l1Hits.Inc()
			return e.value()
		}
	}
	// The shared fetch outlives the caller that started it: the others
	// waiting for the key must not fail because that one gave up. Each
	// caller still returns when its own ctx ends.
	ch := c.sf.DoChan(key, func() (v any, err error) {
		// DoChan would re-panic on a goroutine of its own and end the
		// process; a loader's panic is this key's error instead.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("cache: load of %q panicked: %v", key, p)
			}
		}()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.LoadTimeout)
		defer cancel()
		return c.fetch(fctx, key, load)
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	if res.Err != nil {
		return nil, "", res.Err
	}
	r, shared := res.Val.(result), res.Shared
	if shared && c.invalidatedSince(key, r.e0) {
		// The shared fetch began before an invalidation this caller may
		// have started after: fetch on our own rather than return it.
		var err error
		if r, err = c.fetch(ctx, key, load); err != nil {
			return nil, "", err
		}
	}
	if r.src == FromL2 {
		c.m.l2Hits.Inc()
	} else {
		c.m.dbReads.Inc()
	}
	c.keepL1(key, r)
	val, _, err := r.value()
	return val, r.src, err
}

func (e entry) value() ([]byte, Source, error) {
	if !e.found {
		return nil, FromL1, ErrNotFound
	}
	return e.val, FromL1, nil
}

// keepL1 puts r into L1 unless an invalidation of key arrived since the
// fetch began. Checked again after the put: an invalidation handled between
// the check and the put would otherwise miss the entry.
func (c *Cache) keepL1(key string, r result) {
	if c.l1 == nil || r.stale || c.invalidatedSince(key, r.e0) {
		return
	}
	c.l1.Set(key, r.entry)
	if c.invalidatedSince(key, r.e0) {
		c.l1.Invalidate(key)
		c.m.l1Dropped.Inc()
	}
}

func (c *Cache) invalidatedSince(key string, e0 uint64) bool {
	return !c.live.Load() || c.flushAt.Load() > e0 || c.slot[c.slotOf(key)].Load() > e0
}

func (c *Cache) slotOf(key string) uint64 {
	return maphash.String(c.seed, key) & (slots - 1)
}

// fetch reads key from Redis, taking a lease on a miss, else loads it.
func (c *Cache) fetch(ctx context.Context, key string, load Loader) (result, error) {
	r := result{e0: c.epoch.Load()}
	lease := c.ks.Lease(key)
	token := newToken()
	got, err := c.read.Run(ctx, c.rdb, []string{key, lease}, token, c.cfg.LeaseTTL.Milliseconds()).Slice()
	if err != nil {
		return r, fmt.Errorf("cache read %s: %w", key, err)
	}
	if hit, _ := got[0].(int64); hit == 1 {
		s, _ := got[1].(string)
		r.entry, r.src = decode(s), FromL2
		return r, nil
	}
	leased, _ := got[1].(int64)
	if leased == 0 {
		// Another process is filling: give it a moment, then load
		// ourselves without filling.
		if s, ok := c.awaitFill(ctx, key); ok {
			r.entry, r.src = decode(s), FromL2
			return r, nil
		}
	}
	val, found, err := load(ctx)
	if err != nil {
		return r, err
	}
	r.entry, r.src = entry{val: val, found: found}, FromDB
	c.m.loads.Inc()
	if leased == 0 {
		return r, nil
	}
	stored, ttl := notFound, c.cfg.NotFoundTTL
	if found {
		stored, ttl = string(val), c.jittered()
	}
	ok, err := c.fill.Run(ctx, c.rdb, []string{key, lease}, token, stored, ttl.Milliseconds()).Int64()
	if err != nil {
		c.log.Warn().Err(err).Str("key", key).Msg("cache fill failed")
	} else if ok == 0 {
		c.m.refused.Inc()
		r.stale = true
	}
	return r, nil
}

func (c *Cache) awaitFill(ctx context.Context, key string) (string, bool) {
	deadline := time.Now().Add(c.cfg.LeaseWait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return "", false
		case <-time.After(c.cfg.LeaseWait / 5):
		}
		s, err := c.rdb.Get(ctx, key).Result()
		if err == nil {
			return s, true
		}
	}
	return "", false
}

func (c *Cache) jittered() time.Duration {
	j := c.cfg.Jitter * (2*rand.Float64() - 1)
	return time.Duration(float64(c.cfg.TTL) * (1 + j))
}

func decode(s string) entry {
	if s == notFound {
		return entry{}
	}
	return entry{val: []byte(s), found: true}
}

func newToken() string {
	var b [16]byte
	for i := 0; i < 2; i++ {
		u := rand.Uint64()
		for j := 0; j < 8; j++ {
			b[i*8+j] = byte(u >> (8 * j))
		}
	}
	return hex.EncodeToString(b[:])
}

// PeekL1 returns key's L1 entry without counting a read (for checks).
func (c *Cache) PeekL1(key string) (val []byte, found, ok bool) {
	if c.l1 == nil {
		return nil, false, false
	}
	e, ok := c.l1.GetEntryQuietly(key)
	return e.Value.val, e.Value.found, ok
}
