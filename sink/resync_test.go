package sink

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

func TestTemplateMatch(t *testing.T) {
	for _, c := range []struct {
		tmpl, key string
		want      bool
	}{
		{"goods:{id}", "goods:7", true},
		{"goods:{id}", "goods:json:7", true}, // a value may hold the literal
		{"goods:{id}", "goods:", true},       // an empty value
		{"goods:{id}", "good:7", false},
		{"sk:{{{id}}}:stock", "sk:{42}:stock", true},
		{"sk:{{{id}}}:stock", "sk:{42}:pending", false},
		{"{a}:{b}:x", "1:2:3:x", true},
		{"{a}:{b}:x", "1:x", false},
		{"on_sale", "on_sale", true},
		{"on_sale", "on_sale2", false},
	} {
		tp, err := ParseTemplate(c.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		if got := tp.Match(c.key); got != c.want {
			t.Errorf("%q.Match(%q) = %v, want %v", c.tmpl, c.key, got, c.want)
		}
	}
}

// TestResyncPurgesOwnedKeys: the purge deletes every key a rule writes
// (with its version and fill lease) and every version key, announces the
// deleted keys with a seq past the last one published, keeps the
// application's keys and the sets only member-remove rules name, and is
// refused once the writer's lease is gone.
func TestResyncPurgesOwnedKeys(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	cfg := Config{Rules: []RuleConfig{
		{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{"goods:{id}"}},
		{Table: "shop.goods", Kind: KindMirror, Key: "stock:{id}", Column: "stock"},
		{Table: "shop.goods", Kind: KindMember, Key: "on_sale", Member: "{id}"},
		{Table: "shop.orders", Kind: KindMember, Op: OpRemove, Key: "pending:{item}", Member: "{id}"},
	}}
	cfg.SetDefaults()
	a, err := NewApplier(cfg, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ks := keyspace.Keyspace{Prefix: cfg.KeyPrefix}
	fence := Fence{Key: ks.Leader("cdc"), Value: "7 me"}
	rdb.Set(ctx, fence.Key, fence.Value, 0)

	owned := []string{"goods:1", "goods:json:1", "goods:a/b", "goods:\x00\xff", "stock:1", "stock:2", "stock:\xfe", "on_sale"}
	for _, k := range owned {
		rdb.Set(ctx, k, "old", 0)
	}
	for i := range 3000 { // several SCAN pages
		owned = append(owned, "goods:"+strconv.Itoa(100+i))
		rdb.Set(ctx, owned[len(owned)-1], "old", 0)
	}
	rdb.Set(ctx, ks.Version("stock:1"), "5", 0)
	rdb.Set(ctx, ks.Version("stock:9"), "6", 0) // a tombstone
	rdb.Set(ctx, ks.Lease("goods:1"), "fill", 0)
	kept := []string{"pending:3", "app:session", "cachesync:leader:cdc", "cachesync:seq"}
	rdb.SAdd(ctx, "pending:3", "o1")
	rdb.Set(ctx, "app:session", "x", 0)
	rdb.Set(ctx, ks.Seq(), "10", 0) // went back with Redis
	a.lastSeq.Store(20)
	rdb.HSet(ctx, ks.Checkpoint(), "version", "1")

	sub := rdb.Subscribe(ctx, cfg.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	if err := a.BeginResync(ctx, fence); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.ResyncPending(ctx); err != nil || !ok {
		t.Fatalf("ResyncPending after Begin = %v, %v", ok, err)
	}
	if n, _ := rdb.Exists(ctx, ks.Checkpoint()).Result(); n != 0 {
		t.Error("checkpoint not deleted by BeginResync")
	}
	n, err := a.PurgeOwned(ctx, fence)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(owned) {
		t.Errorf("PurgeOwned deleted %d keys, want %d", n, len(owned))
	}
	for _, k := range append(owned, ks.Version("stock:1"), ks.Version("stock:9"), ks.Lease("goods:1")) {
		if n, _ := rdb.Exists(ctx, k).Result(); n != 0 {
			t.Errorf("%s survived the purge", k)
		}
	}
	for _, k := range kept {
		if n, _ := rdb.Exists(ctx, k).Result(); n != 1 {
			t.Errorf("%s deleted by the purge", k)
		}
	}
	var announced []string
	lastSeq := int64(0)
	for len(announced) < len(owned) {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seq, keys := decodeKeys(t, m.Payload) // keys that are not UTF-8 in base64
		if lastSeq == 0 && seq <= 21 {
			t.Errorf("first seq %d after a counter that went back to 10, want > 21 (a gap past 20)", seq)
		}
		if lastSeq != 0 && seq != lastSeq+1 {
			t.Errorf("seq %d after %d", seq, lastSeq)
		}
		lastSeq = seq
		announced = append(announced, keys...)
	}
	slices.Sort(announced)
	slices.Sort(owned)
	if !slices.Equal(announced, owned) {
		var missing []string
		for _, k := range owned {
			if !slices.Contains(announced, k) {
				missing = append(missing, k)
			}
		}
		t.Errorf("announced %d keys, want the %d deleted; missing %q", len(announced), len(owned), missing)
	}

	if err := a.EndResync(ctx, fence); err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.ResyncPending(ctx); ok {
		t.Error("ResyncPending after End")
	}
	rdb.Set(ctx, "goods:1", "new", 0)
	rdb.Set(ctx, fence.Key, "8 other", 0)
	if _, err := a.PurgeOwned(ctx, fence); !errors.Is(err, ErrFenced) {
		t.Errorf("PurgeOwned under an ended term: %v, want ErrFenced", err)
	}
	if err := a.BeginResync(ctx, fence); !errors.Is(err, ErrFenced) {
		t.Errorf("BeginResync under an ended term: %v, want ErrFenced", err)
	}
	if rdb.Get(ctx, "goods:1").Val() != "new" {
		t.Error("a fenced purge deleted a key")
	}
}
