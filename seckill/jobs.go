package seckill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Jobs runs the sale's background work on one ticker each: cancel unpaid
// orders, produce the orders left in the outbox, reap orphaned
// reservations, rebuild items that are not ready, and (optionally) check
// drift.
type Jobs struct {
	cfg      Config
	rdb      redis.UniversalClient
	store    *Store
	producer sender
	rebuild  *Rebuilder
	check    *Checker
	m        *metrics
	log      zerolog.Logger
	now      func() time.Time

	kickMu  sync.Mutex
	kicked  map[int64]bool
	kickCh  chan struct{}
	running sync.Map      // item → struct{}: a rebuild in progress or waiting for a slot
	slots   chan struct{} // rebuilds running at once (maxRebuilds)

	lagFailing    bool // the last lag reading failed (only the lag loop touches it)
	outboxFailing bool // the last outbox run failed to produce (only its loop touches it)
}

func newJobs(cfg Config, rdb redis.UniversalClient, store *Store, prod sender, rb *Rebuilder, ck *Checker, m *metrics, log zerolog.Logger) *Jobs {
	return &Jobs{cfg: cfg, rdb: rdb, store: store, producer: prod, rebuild: rb, check: ck, m: m, log: log, now: time.Now,
		kicked: map[int64]bool{}, kickCh: make(chan struct{}, 1), slots: make(chan struct{}, maxRebuilds)}
}

// maxRebuilds bounds the rebuilds running at once. A rebuild waits
// produce_timeout, then polls Kafka's committed offsets and the CDC
// checkpoint and reads MySQL; after Redis lost its data every item needs
// one, and they run maxRebuilds at a time instead of all together. Only
// items known to exist are kicked: ensureReady lists sk_items, and a
// reservation kicks only an item knownItems vouches for.
const maxRebuilds = 8

// Kick asks for a rebuild of item (a reservation found it not ready).
// It never blocks.
func (j *Jobs) Kick(item int64) {
	j.kickMu.Lock()
	j.kicked[item] = true
	j.kickMu.Unlock()
	select {
	case j.kickCh <- struct{}{}:
	default:
	}
}

// Run runs every job until ctx is done and they all returned. It then
// removes the drift and consumer lag gauges: they describe the term that
// ended, and the next holder of the jobs lease reports its own.
func (j *Jobs) Run(ctx context.Context) {
	defer j.m.termEnded()
	var wg sync.WaitGroup
	loop := func(name string, every time.Duration, now bool, fn func(context.Context)) {
		runs := j.m.jobRuns.WithLabelValues(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				if now {
					runs.Inc()
					fn(ctx)
				}
				now = true
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	loop("unpaid", j.cfg.JobInterval, true, j.cancelUnpaid)
	loop("outbox", j.cfg.JobInterval, true, j.drainOutbox)
	loop("orphans", j.cfg.JobInterval, true, j.reapOrphans)
	loop("ready", j.cfg.JobInterval, true, j.ensureReady)
	loop("lag", j.cfg.JobInterval, true, j.measureLag)
	if j.cfg.CheckInterval > 0 {
		// First after one interval: items are made ready at start.
		loop("check", j.cfg.CheckInterval, false, j.runCheck)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-j.kickCh:
			}
			j.kickMu.Lock()
			items := make([]int64, 0, len(j.kicked))
			for it := range j.kicked {
				items = append(items, it)
			}
			clear(j.kicked)
			j.kickMu.Unlock()
			for _, it := range items {
				if !j.startRebuild(ctx, it, &wg) {
					return
				}
			}
		}
	}()
	wg.Wait()
}

// measureLag sets cachesync_seckill_consumer_lag_messages from the group's
// committed offsets. A failure keeps the last values (the backlog does not
// go away while Kafka is unreachable) and is logged once until a reading
// succeeds again.
func (j *Jobs) measureLag(ctx context.Context) {
	lags, err := j.rebuild.lag.lags(j.cfg.Kafka.Topic, j.cfg.Kafka.Group)
	if err != nil {
		if !j.lagFailing && ctx.Err() == nil {
			j.log.Warn().Err(err).Msg("consumer lag: cannot read offsets")
		}
		j.lagFailing = true
		return
	}
	if j.lagFailing {
		j.log.Info().Msg("consumer lag: offsets readable again")
	}
	j.lagFailing = false
	for p, n := range lags {
		j.m.consumerLag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(n))
	}
}

func (j *Jobs) cancelUnpaid(ctx context.Context) {
	for ctx.Err() == nil {
		done, err := j.store.CancelUnpaid(ctx, j.cfg.UnpaidTimeout, 500)
		j.m.canceled.Add(float64(len(done)))
		for _, o := range done {
			j.log.Info().Str("order", o.ID).Int64("item", o.Item).Int64("user", o.User).Msg("unpaid order canceled; stock returned")
		}
		if err != nil {
			if ctx.Err() == nil {
				j.log.Warn().Err(err).Msg("unpaid-order job")
			}
			return
		}
		if len(done) < 500 {
			return
		}
	}
}

// reapOrphans releases pending reservations older than OrphanAge that
// have no order row and no outbox entry, by fencing the order in MySQL (a
// canceled row): the order can no longer be created, and CDC removes the
// entry from pending and the user from buyers in one step.
func (j *Jobs) reapOrphans(ctx context.Context) {
	items, err := j.store.Items(ctx)
	if err != nil {
		if ctx.Err() == nil {
			j.log.Warn().Err(err).Msg("orphan reaper: list items")
		}
		return
	}
	cutoff := j.now().Add(-j.cfg.OrphanAge)
	for _, item := range items {
		fenced, err := fenceOrphans(ctx, j.rdb, j.store, KeysFor(j.cfg.KeyPrefix, item), item, cutoff, 1000, "reservation orphaned: no order arrived", j.consumed)
		for _, o := range fenced {
			j.m.reaped.Inc()
			j.log.Warn().Str("order", o.ID).Int64("item", item).Int64("user", o.User).Msg("orphaned reservation released")
		}
		if errors.Is(err, errConsumerBehind) { // the lag metric shows it; try again next round
			j.log.Debug().Err(err).Msg("orphan reaper waits for the consumer")
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				j.log.Warn().Err(err).Int64("item", item).Msg("orphan reaper")
			}
			return
		}
	}
}

// consumed returns nil once the consumer group has read every message in
// the topic: a reservation whose outbox entry was removed because its
// message is in Kafka is then stored (an order row) or dead-lettered, and
// no longer looks orphaned. Before that, the reaper leaves reservations
// alone: with the consumer behind by more than orphan_age (down, or slow
// on a loaded machine), it would fence orders that were accepted (202) and
// wait in Kafka.
func (j *Jobs) consumed(context.Context) error {
	lags, err := j.rebuild.lag.lags(j.cfg.Kafka.Topic, j.cfg.Kafka.Group)
	if err != nil { // logged by measureLag
		return fmt.Errorf("%w, or not: its offsets cannot be read: %v", errConsumerBehind, err)
	}
	var behind int64
	for _, n := range lags {
		behind += n
	}
	if behind > 0 {
		return fmt.Errorf("%w: %d messages to read", errConsumerBehind, behind)
	}
	return nil
}

// errConsumerBehind: the consumer group has not read every message yet
// (or its offsets cannot be read).
var errConsumerBehind = errors.New("the consumer group is behind")

// fenceOrphans fences (Store.Fence) the pending reservations of item
// reserved before cutoff that have no order row, at most limit of them
// (0: all). consumed, when not nil, is asked once before the first fence
// whether every message in Kafka was read (see Jobs.consumed); if not,
// nothing is fenced. CDC of the fence row then removes the entry from pending and
// the user from buyers, and a message for the order that still arrives is
// a duplicate. It returns the orders it fenced; an entry whose row exists
// is left to CDC, an unparsable one to the drift check and the rebuild.
// A reservation still in the outbox is not an orphan: its order is
// waiting to be produced (Kafka has been failing for that long), and a
// fence would turn an order the user was told is accepted into a
// duplicate.
func fenceOrphans(ctx context.Context, rdb redis.UniversalClient, store *Store, k Keys, item int64, cutoff time.Time, limit int64, reason string,
	consumed func(context.Context) error) ([]Order, error) {
	old, err := rdb.ZRangeByScoreWithScores(ctx, k.Pending, &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(cutoff.UnixMilli(), 10), Count: limit}).Result()
	if err != nil {
		return nil, fmt.Errorf("read pending: %w", err)
	}
	queued := map[string]bool{}
	if len(old) > 0 {
		// Read after pending: an entry leaves the outbox only once its
		// message is in Kafka (or with its released reservation), so an
		// order missing here is not waiting for a produce.
		orders, err := rdb.HKeys(ctx, k.Outbox).Result()
		if err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		for _, o := range orders {
			queued[o] = true
		}
	}
	var fenced []Order
	for _, z := range old {
		m, _ := z.Member.(string)
		order, user, ok := parseMember(m)
		if !ok || queued[order] {
			continue
		}
		if consumed != nil {
			if err := consumed(ctx); err != nil {
				return fenced, fmt.Errorf("not releasing reservations older than orphan_age yet: %w", err)
			}
			consumed = nil // asked once: read after the outbox, it covers every entry read
		}
		o := Order{ID: order, User: user, Item: item, ReservedAt: time.UnixMilli(int64(z.Score)).UTC()}
		done, err := store.Fence(ctx, o, reason)
		if err != nil {
			return fenced, fmt.Errorf("fence order %s: %w", order, err)
		}
		if done {
			fenced = append(fenced, o)
		}
	}
	return fenced, nil
}

// ensureReady rebuilds items whose ready marker is missing: new items, and
// every item after Redis lost its data.
func (j *Jobs) ensureReady(ctx context.Context) {
	items, err := j.store.Items(ctx)
	if err != nil {
		return
	}
	for _, item := range items {
		n, err := j.rdb.Exists(ctx, KeysFor(j.cfg.KeyPrefix, item).Ready).Result()
		if err != nil {
			return
		}
		if n == 0 {
			j.Kick(item)
		}
	}
}

// startRebuild starts a rebuild of item unless one is running, once a
// slot is free (it waits for one: kicks meanwhile gather in j.kicked). It
// returns false when ctx ended first.
func (j *Jobs) startRebuild(ctx context.Context, item int64, wg *sync.WaitGroup) bool {
	if _, busy := j.running.LoadOrStore(item, struct{}{}); busy {
		return true
	}
	select {
	case j.slots <- struct{}{}:
	case <-ctx.Done():
		j.running.Delete(item)
		return false
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-j.slots }()
		defer j.running.Delete(item)
		// A kick from a reservation that found the item not ready just
		// before the last rebuild finished is stale: rebuilding a ready
		// item would pause its sale again for nothing.
		k := KeysFor(j.cfg.KeyPrefix, item)
		if n, err := j.rdb.Exists(ctx, k.Ready, k.Stock).Result(); err == nil && n == 2 {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := j.rebuild.Rebuild(rctx, item); err != nil {
			if !errors.Is(err, context.Canceled) {
				j.m.rebuildErrors.Inc()
				j.log.Error().Err(err).Int64("item", item).Msg("rebuild failed; retried on the next reservation or job tick")
			}
			return
		}
		j.m.rebuilds.Inc()
	}()
	return true
}

func (j *Jobs) runCheck(ctx context.Context) {
	res, err := j.check.Check(ctx, nil)
	if err != nil {
		if ctx.Err() == nil {
			j.log.Warn().Err(err).Msg("drift check")
		}
		return
	}
	j.m.observeCheck(res)
	for _, d := range res.Drift {
		j.log.Error().Int64("item", d.Item).Str("kind", d.Kind).Str("detail", d.Detail).Str("redis", d.Redis).Str("mysql", d.MySQL).
			Msg("drift between Redis and MySQL; repair with `cachesync resync --item ID`")
	}
}
