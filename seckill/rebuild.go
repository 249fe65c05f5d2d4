package seckill

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cenkalti/backoff/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

var (
	//go:embed rebuild.lua
	rebuildSrc    string
	rebuildScript = redis.NewScript(rebuildSrc)
	//go:embed inspect.lua
	inspectSrc    string
	inspectScript = redis.NewScript(inspectSrc)
	// announceScript publishes an invalidation of ARGV[2..] on channel
	// ARGV[1], numbered by the counter KEYS[1], as apply.lua does.
	announceScript = redis.NewScript(`local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"seq":' .. seq .. ',"keys":' .. cjson.encode({unpack(ARGV, 2)}) .. '}')
return seq`)
)

// Rebuilder repairs an item's Redis keys from MySQL: pause reservations
// of the item, wait until every order already produced for it is stored
// (waitDrained: at once for an item with no order waiting in Kafka, such
// as a new item, even with the consumer down),
// fence the orphaned reservations (older than OrphanAge, no order row),
// wait until CDC has applied MySQL's current position, then rewrite
// stock, pending and buyers from one consistent MySQL read and resume.
// It is what `cachesync resync` runs and what the daemon runs by itself
// when a reservation finds an item's keys missing (Redis lost its data).
type Rebuilder struct {
	cfg     Config
	ks      keyspace.Keyspace
	channel string
	rdb     redis.UniversalClient
	db      *sql.DB // binlog-position queries need SHOW MASTER STATUS rights
	store   *Store
	lag     *lagReader
	log     zerolog.Logger
	// Grace is how long in-flight produces may still land after the
	// pause; ProduceTimeout by default.
	Grace time.Duration
}

// NewRebuilder connects a Kafka client for the drain wait.
func NewRebuilder(cfg Config, ks keyspace.Keyspace, channel string, rdb redis.UniversalClient, db *sql.DB, store *Store, log zerolog.Logger) (*Rebuilder, error) {
	lag, err := newLagReader(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	return &Rebuilder{cfg: cfg, ks: ks, channel: channel, rdb: rdb, db: db, store: store, lag: lag, log: log, Grace: cfg.ProduceTimeout}, nil
}

// Close releases the Kafka client.
func (r *Rebuilder) Close() error { return r.lag.Close() }

// Rebuild runs the whole repair for item; reservations of the item get
// 503 until it returns nil.
func (r *Rebuilder) Rebuild(ctx context.Context, item int64) error {
	k := KeysFor(r.cfg.KeyPrefix, item)
	if err := r.rdb.Del(ctx, k.Ready).Err(); err != nil {
		return fmt.Errorf("pause item %d: %w", item, err)
	}
	if err := r.announce(ctx, k); err != nil {
		return fmt.Errorf("pause item %d: %w", item, err)
	}
	r.log.Info().Int64("item", item).Msg("rebuild: reservations paused")
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(r.Grace):
	}
	if err := r.lag.waitDrained(ctx, r.cfg.Kafka.Topic, r.cfg.Kafka.Group, item); err != nil {
		return fmt.Errorf("rebuild item %d: wait for the consumer: %w", item, err)
	}
	// Every order produced before the pause is stored now: a reservation
	// older than OrphanAge without a row is an orphan (the reaper's rule),
	// which a rewrite would otherwise keep as in flight. Fence it; CDC
	// releases it before the rewrite reads pending.
	fenced, err := fenceOrphans(ctx, r.rdb, r.store, k, item, time.Now().Add(-r.cfg.OrphanAge), 0, "reservation orphaned: no order arrived (resync)", nil)
	for _, o := range fenced {
		r.log.Warn().Str("order", o.ID).Int64("item", item).Int64("user", o.User).Msg("rebuild: orphaned reservation released")
	}
	if err != nil {
		return fmt.Errorf("rebuild item %d: orphans: %w", item, err)
	}
	if err := WaitApplied(ctx, r.db, r.rdb, r.ks); err != nil {
		return fmt.Errorf("rebuild item %d: %w", item, err)
	}
	// An attempt that a change of the item overtook is tried again, after
	// a jittered wait growing from 5 ms to 250 ms (about 23 s over 100
	// attempts).
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 5*time.Millisecond, 250*time.Millisecond
	attempts := 0
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		attempts++
		done, err := r.rebuildOnce(ctx, item, k)
		switch {
		case err != nil:
			return struct{}{}, backoff.Permanent(err)
		case !done:
			return struct{}{}, fmt.Errorf("CDC applied a newer change of the item during each of %d attempts", attempts)
		}
		return struct{}{}, nil
	}, backoff.WithBackOff(bo), backoff.WithMaxTries(100), backoff.WithMaxElapsedTime(0))
	switch {
	case err == nil:
		r.log.Info().Int64("item", item).Int("attempts", attempts).Msg("rebuild: keys rewritten from MySQL; reservations resumed")
		return nil
	case ctx.Err() != nil && errors.Is(err, context.Cause(ctx)):
		return ctx.Err() // not its cause: Jobs tell a cancelled rebuild by context.Canceled
	}
	return fmt.Errorf("rebuild item %d: %w", item, err)
}

// rebuildOnce reads MySQL in one consistent snapshot at binlog version V
// and writes the keys, unless CDC applied a newer change of this item
// meanwhile. The guard takes the item's own keys only, in its slot:
//
//   - Every change of an item's stock reaches Redis through the mirror
//     rule with its binlog version beside the stock (versioned). A
//     version above V means CDC applied a change of this item after the
//     snapshot: writing the snapshot would undo it, so retry. Every order
//     that takes stock (PlaceOrder) and every cancel that returns it
//     (unpaid timeout) changes the stock in the same transaction, so
//     those are caught too.
//   - An order stored as failed, a fence and a payment change no stock.
//     CDC only removes the failed or fenced order from pending and buyers,
//     which the rewrite keeps removed: it only removes from pending, and
//     buyers becomes the snapshot's live orders (where such an order is
//     not) plus the users still pending. A live order canceled after V
//     without a stock change (by hand) would be written back into buyers:
//     buyers is read before the snapshot, and an entry of a live order
//     there that is gone when the script runs means a retry.
//   - Changes up to V that CDC applies after the rewrite move the keys to
//     where they already are: the stock's older version is refused, a
//     member already removed is removed again, a buyer set again to the
//     same order.
//
// No reservation adds to pending meanwhile (the item is paused), so the
// rewrite never loses one: available = stock − |pending| is MySQL's stock
// at V minus the reservations without an order row at V, each counted
// once, and CDC applies whatever comes after V on top of it. Writes to
// other tables, however many, do not matter: the old guard (the global
// checkpoint not past V) retried after each of them, and on a busy
// database gave up after 100 attempts.
func (r *Rebuilder) rebuildOnce(ctx context.Context, item int64, k Keys) (bool, error) {
	pipe := r.rdb.Pipeline()
	zr := pipe.ZRange(ctx, k.Pending, 0, -1)
	hg := pipe.HGetAll(ctx, k.Buyers)
	if _, err := pipe.Exec(ctx); err != nil {
		return false, err
	}
	pending, seen := zr.Val(), hg.Val()
	orders := make([]string, 0, len(pending))
	byOrder := map[string]string{}
	var junk []string // not "order:user": no reservation wrote it
	for _, m := range pending {
		if o, _, ok := parseMember(m); ok {
			orders = append(orders, o)
			byOrder[o] = m
		} else {
			junk = append(junk, m)
		}
	}
	var st ItemState
	pos, err := binlog.ReadConsistent(ctx, r.db, func(conn *sql.Conn, _ binlog.Position) error {
		var err error
		st, err = r.store.readItem(ctx, conn, item, orders)
		return err
	})
	if err != nil {
		return false, err
	}
	ver, err := pos.Version()
	if err != nil {
		return false, err
	}
	args := []any{ver, st.Stock, 0}
	drop := 0
	for o := range st.Orders {
		args = append(args, byOrder[o])
		drop++
	}
	for _, m := range junk {
		args = append(args, m)
		drop++
	}
	args[2] = drop
	for u, o := range st.Live {
		us := strconv.FormatInt(u, 10)
		held := "0"
		if seen[us] == o {
			held = "1"
		}
		args = append(args, us, o, held)
	}
	n, err := rebuildScript.Run(ctx, r.rdb, []string{k.Stock, r.ks.Version(k.Stock), k.Pending, k.Buyers, k.Ready}, args...).Int()
	if err != nil || n != 1 {
		return false, err
	}
	// The keys changed: say so, as CDC does after a write. The pause
	// announced them already, which is what the API's sold-out flags need
	// (see announce), so a failure here is only logged.
	if err := r.announce(ctx, k); err != nil {
		r.log.Warn().Err(err).Int64("item", item).Msg("rebuild: keys rewritten, invalidation not published")
	}
	return true, nil
}

// announce publishes an invalidation message naming the item's keys, with
// the next number of the source's sequence (its own slot on a Redis
// Cluster, not the item's: a call of its own, after the keys' call). The
// API drops the item's sold-out flag on it. It is published at the pause
// too: from then until the rewrite sets the ready marker, reservations
// answer "not ready" and set no flag, so a flag set before the rebuild is
// dropped even if the rebuild dies before the rewrite's message.
func (r *Rebuilder) announce(ctx context.Context, k Keys) error {
	return announceScript.Run(ctx, r.rdb, []string{r.ks.Seq()}, r.channel, k.Stock, k.Pending, k.Buyers).Err()
}

// WaitApplied waits until the daemon's CDC checkpoint in Redis has reached
// MySQL's current binlog position (read once, now).
func WaitApplied(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, ks keyspace.Keyspace) error {
	pos, err := binlog.CurrentPosition(ctx, db)
	if err != nil {
		return err
	}
	want, err := pos.Version()
	if err != nil {
		return err
	}
	return waitCheckpoint(ctx, rdb, ks, want)
}

func waitCheckpoint(ctx context.Context, rdb redis.UniversalClient, ks keyspace.Keyspace, want uint64) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		v, err := rdb.HGet(ctx, ks.Checkpoint(), "version").Uint64()
		if err == nil && v >= want {
			return nil
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CDC has not applied binlog version %d (is the daemon running?): %w", want, ctx.Err())
		case <-t.C:
		}
	}
}

// lagReader compares a partition's end offset with the group's committed
// offset.
type lagReader struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
}

func newLagReader(k Kafka) (*lagReader, error) {
	c, err := saramaConfig(k, "cachesync-admin")
	if err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(k.Brokers, c)
	if err != nil {
		return nil, fmt.Errorf("kafka client %v: %w", k.Brokers, err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("kafka admin: %w", err)
	}
	return &lagReader{client: client, admin: admin}, nil
}

func (l *lagReader) Close() error { return l.admin.Close() } // closes the client too

// lags returns, for each partition of topic, how many messages the group
// has not committed yet: the partition's end offset minus the group's
// committed offset, or minus the oldest offset when the group never
// committed there (the consumer starts from the oldest).
func (l *lagReader) lags(topic, group string) (map[int32]int64, error) {
	parts, err := l.client.Partitions(topic)
	if err != nil {
		return nil, err
	}
	resp, err := l.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err != nil && !errors.Is(err, sarama.ErrGroupIDNotFound) {
		return nil, err
	}
	out := make(map[int32]int64, len(parts))
	for _, p := range parts {
		end, err := l.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, err
		}
		from := int64(-1)
		if resp != nil {
			if b := resp.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError {
				from = b.Offset
			}
		}
		if from < 0 {
			if from, err = l.client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
				return nil, err
			}
		}
		out[p] = max(0, end-from)
	}
	return out, nil
}
