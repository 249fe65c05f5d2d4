package daemon

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// In cluster mode NewRedisClient returns a cluster client with the
// credentials and the client settings of the other modes.
func TestNewRedisClientCluster(t *testing.T) {
	rdb := NewRedisClient(config.Redis{Mode: "cluster", Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, Username: "u", Password: "p"})
	defer rdb.Close()
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("NewRedisClient returned %T, want *redis.ClusterClient", rdb)
	}
	o := c.Options()
	if strings.Join(o.Addrs, ",") != "10.0.0.1:7000,10.0.0.2:7000" || o.Username != "u" || o.Password != "p" {
		t.Errorf("options: addrs %q, username %q, password %q; want the two seeds, u, p", o.Addrs, o.Username, o.Password)
	}
	if !o.ContextTimeoutEnabled || o.Dialer == nil || o.ClusterStateReloadInterval != clusterReload {
		t.Errorf("options: ContextTimeoutEnabled %v, Dialer set %v, ClusterStateReloadInterval %v; want true, true, %v",
			o.ContextTimeoutEnabled, o.Dialer != nil, o.ClusterStateReloadInterval, clusterReload)
	}
}

// The cluster client against a real Redis Cluster (testenv's, 3 masters and
// 3 replicas): a script whose keys share a hash tag runs, one whose keys
// are in two slots is refused with CROSSSLOT, which is why the sink refuses
// a cluster client for now. After a master is killed and its replica took
// over, the client finds the new master within seconds.
func TestRedisCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c := testenv.StartRedisCluster(t)
	t.Logf("Redis Cluster ready in %v", time.Since(start).Round(time.Millisecond))
	rdb := NewRedisClient(config.Redis{Mode: "cluster", Addrs: c.Addrs()[:1]})
	defer rdb.Close()

	const script = `redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return redis.call('GET', KEYS[1])`
	if got, err := rdb.Eval(ctx, script, []string{"{item:7}:stock", "{item:7}:pending"}, "5").Text(); err != nil || got != "5" {
		t.Errorf("EVAL on two keys of one hash tag = %q, %v; want 5", got, err)
	}
	if s1, s2 := rdb.ClusterKeySlot(ctx, "item:7:stock").Val(), rdb.ClusterKeySlot(ctx, "item:8:stock").Val(); s1 == s2 {
		t.Fatalf("item:7:stock and item:8:stock share slot %d", s1)
	}
	err := rdb.Eval(ctx, script, []string{"item:7:stock", "item:8:stock"}, "5").Err()
	if err == nil || !strings.HasPrefix(err.Error(), "CROSSSLOT") {
		t.Errorf("EVAL on keys of two slots: %v; want CROSSSLOT", err)
	}

	// The sink takes the cluster client with the cluster keyspace only.
	if _, err := sink.NewApplier(sink.Config{}, rdb, zerolog.Nop(), nil); err == nil {
		t.Error("sink.NewApplier on a cluster client without the cluster keyspace: no error")
	}
	if _, err := sink.NewApplier(sink.Config{Cluster: true, Source: "s"}, rdb, zerolog.Nop(), nil); err != nil {
		t.Errorf("sink.NewApplier on a cluster client: %v", err)
	}

	// A crash of the master of {item:7}: the client follows its replica's
	// promotion (go-redis alone would keep dialing the dead master until
	// its slot map is 60 s old).
	mc, err := rdb.(*redis.ClusterClient).MasterForKey(ctx, "{item:7}")
	if err != nil {
		t.Fatal(err)
	}
	shard := -1
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range masters {
		if m.Addr() == mc.Options().Addr {
			shard = i
		}
	}
	if shard < 0 {
		t.Fatalf("the master of {item:7}, %s, is no shard's master", mc.Options().Addr)
	}
	_, replica, err := c.Shard(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	// The replica has the key before the master dies.
	if n, err := mc.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 on %s = %d, %v", mc.Options().Addr, n, err)
	}
	if _, err := c.KillMaster(ctx, shard); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	healthy := time.Now()
	if m, err := c.Masters(ctx); err != nil || m[shard] != replica {
		t.Fatalf("after KillMaster(%d): masters %v, %v; want %s", shard, m, err, replica.Addr())
	}
	var fails int
	if err := testenv.WaitFor(ctx, 10*time.Millisecond, func(ctx context.Context) error {
		got, err := rdb.Get(ctx, "{item:7}:stock").Result()
		if err != nil {
			fails++
			return err
		}
		if got != "5" {
			return fmt.Errorf("{item:7}:stock = %q, want 5", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster healthy %v after the kill; the client read from the new master %v after that (%d failed reads)",
		healthy.Sub(killed).Round(time.Millisecond), time.Since(healthy).Round(time.Millisecond), fails)
	if d := time.Since(healthy); d > 5*clusterReload {
		t.Errorf("the client took %v to find the new master", d)
	}
}
