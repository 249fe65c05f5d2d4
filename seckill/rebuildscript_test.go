package seckill

import (
	"context"
	"maps"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

// TestRebuildScriptGuard: rebuild.lua writes a snapshot taken at version
// 100 unless the item's own keys show a change after it: the stock's
// version above 100 (CDC applied a stock change), or a live order of the
// snapshot that buyers held before the read and no longer holds (canceled
// since). Nothing else refuses it; a refused call writes nothing.
func TestRebuildScriptGuard(t *testing.T) {
	rs := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	ks := keyspace.Keyspace{Prefix: "cs:", Source: "main", Cluster: true}
	k := KeysFor("sk:", 7)
	cases := []struct {
		name      string
		version   string            // the stock's version before ("" none)
		buyers    map[string]string // buyers before the call
		seen      string            // "seen" flag of user 1's live order
		want      int
		wantStock string
	}{
		{name: "no version", buyers: map[string]string{"1": "7-a"}, seen: "1", want: 1, wantStock: "4"},
		{name: "older version", version: "99", buyers: map[string]string{"1": "7-a"}, seen: "1", want: 1, wantStock: "4"},
		{name: "same version", version: "100", buyers: map[string]string{"1": "7-a"}, seen: "1", want: 1, wantStock: "4"},
		{name: "stock changed after the snapshot", version: "101", buyers: map[string]string{"1": "7-a"}, seen: "1", want: 0, wantStock: "9"},
		{name: "live order left buyers after the read", version: "99", buyers: map[string]string{}, seen: "1", want: 0, wantStock: "9"},
		{name: "live order not in buyers at the read", version: "99", buyers: map[string]string{}, seen: "0", want: 1, wantStock: "4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rdb.FlushAll(ctx)
			rdb.Set(ctx, k.Stock, 9, 0)
			if c.version != "" {
				rdb.Set(ctx, ks.Version(k.Stock), c.version, 0)
			}
			rdb.ZAdd(ctx, k.Pending, redis.Z{Score: 1, Member: "7-b:2"}, redis.Z{Score: 1, Member: "7-c:3"}, redis.Z{Score: 1, Member: "junk"})
			if len(c.buyers) > 0 {
				rdb.HSet(ctx, k.Buyers, c.buyers)
			}
			// Snapshot: stock 4, order 7-b stored (dropped from pending),
			// 7-c in flight, user 1's order 7-a live.
			n, err := rebuildScript.Run(ctx, rdb, []string{k.Stock, ks.Version(k.Stock), k.Pending, k.Buyers, k.Ready},
				100, 4, 2, "7-b:2", "junk", 1, "7-a", c.seen).Int()
			if err != nil || n != c.want {
				t.Fatalf("rebuild.lua: %d %v, want %d", n, err, c.want)
			}
			if v := rdb.Get(ctx, k.Stock).Val(); v != c.wantStock {
				t.Errorf("stock %q, want %q", v, c.wantStock)
			}
			ready := rdb.Exists(ctx, k.Ready).Val()
			if c.want == 0 {
				if ready != 0 || rdb.ZCard(ctx, k.Pending).Val() != 3 {
					t.Errorf("a refused rebuild wrote: ready %d, pending %v", ready, rdb.ZRange(ctx, k.Pending, 0, -1).Val())
				}
				return
			}
			if v := rdb.Get(ctx, ks.Version(k.Stock)).Val(); v != "100" || ready != 1 {
				t.Errorf("version %q ready %d, want 100 and 1", v, ready)
			}
			if p := rdb.ZRange(ctx, k.Pending, 0, -1).Val(); len(p) != 1 || p[0] != "7-c:3" {
				t.Errorf("pending %v, want [7-c:3]", p)
			}
			if b := rdb.HGetAll(ctx, k.Buyers).Val(); !maps.Equal(b, map[string]string{"1": "7-a", "3": "7-c"}) {
				t.Errorf("buyers %v, want 1 → 7-a, 3 → 7-c", b)
			}
		})
	}
}
