package seckill

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// ErrUnknownItem: no sale item has this id (404).
var ErrUnknownItem = errors.New("unknown item")

// errLookupBusy: the known-items set could not be trusted and too many
// MySQL lookups were already running; the caller answers 503.
var errLookupBusy = errors.New("item lookups busy")

// maxItemLookups bounds the MySQL lookups of knownItems.has running at
// once: with the set untrusted (Redis lost its data) a flood of made-up
// ids costs MySQL at most this many primary-key reads at a time.
const maxItemLookups = 4

// knownItems tells a sale item from a made-up id. It is asked only when
// an item's keys are not ready (the reserve script's "not ready", a
// GET of an item without its ready marker or stock): a ready item never
// costs a lookup.
//
// The set ItemsKey is kept by a CDC member rule on sk_items (required by
// Config.CheckRules), in the same batch as the item's stock, so an item is
// known as soon as its INSERT is applied and unknown once its DELETE is.
// Its absence proves nothing while it may be incomplete: it is trusted
// only when it exists and the sink's snapshot of sk_items is done. When
// Redis lost its data, the snapshot that refills it is running, or the
// sale has no item at all, the id is looked up in MySQL instead, at most
// maxItemLookups at a time (beyond that: errLookupBusy, a 503 that never
// tells a real item it does not exist).
type knownItems struct {
	rdb      redis.UniversalClient
	key      string // ItemsKey
	progress string // the sink's snapshot progress hash
	table    string // its field for sk_items ("schema.sk_items", lower case)
	store    *Store
	slots    chan struct{}
	m        *metrics
}

func newKnownItems(cfg Config, ks keyspace.Keyspace, rdb redis.UniversalClient, store *Store, m *metrics) *knownItems {
	return &knownItems{rdb: rdb, key: ItemsKey(cfg.KeyPrefix), progress: ks.SnapshotProgress(),
		table: strings.ToLower(cfg.Database + ".sk_items"), store: store, slots: make(chan struct{}, maxItemLookups), m: m}
}

// has reports whether item is a sale item: one Redis round trip, plus a
// MySQL read when the set cannot be trusted. It starts nothing and logs
// nothing.
func (k *knownItems) has(ctx context.Context, item int64) (bool, error) {
	pipe := k.rdb.Pipeline()
	member := pipe.SIsMember(ctx, k.key, strconv.FormatInt(item, 10))
	exists := pipe.Exists(ctx, k.key)
	progress := pipe.HGet(ctx, k.progress, k.table)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	switch {
	case member.Val():
		return true, nil
	case exists.Val() == 1 && progress.Val() == sink.ProgressDone:
		return false, nil
	}
	select {
	case k.slots <- struct{}{}:
	default:
		k.m.itemLookups.WithLabelValues("busy").Inc()
		return false, errLookupBusy
	}
	defer func() { <-k.slots }()
	ok, err := k.store.ItemExists(ctx, item)
	switch {
	case err != nil:
		k.m.itemLookups.WithLabelValues("error").Inc()
	case ok:
		k.m.itemLookups.WithLabelValues("known").Inc()
	default:
		k.m.itemLookups.WithLabelValues("unknown").Inc()
	}
	return ok, err
}
