package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisCluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c := StartRedisCluster(t)
	t.Logf("Redis Cluster ready in %v: nodes %v", time.Since(start).Round(time.Millisecond), c.Addrs())

	if addrs := c.Addrs(); len(addrs) != 6 || len(slices.Compact(slices.Sorted(slices.Values(addrs)))) != 6 {
		t.Fatalf("Addrs = %v, want 6 distinct addresses", addrs)
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replicas, err := c.Replicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ClusterShards {
		if err := replicating(ctx, nil, replicas[i].Addr(), masters[i].Addr()); err != nil {
			t.Errorf("shard %d: %v", i, err)
		}
		if got := redisDo(t, masters[i].Addr(), "CONFIG", "GET", "cluster-node-timeout"); got != "cluster-node-timeout,"+strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10) {
			t.Errorf("shard %d: CONFIG GET cluster-node-timeout = %q", i, got)
		}
	}
	info := fields(redisDo(t, masters[0].Addr(), "CLUSTER", "INFO"))
	if info["cluster_size"] != "3" || info["cluster_known_nodes"] != "6" {
		t.Errorf("CLUSTER INFO: cluster_size %s, cluster_known_nodes %s; want 3 and 6", info["cluster_size"], info["cluster_known_nodes"])
	}

	// A cluster client reaches every shard: 100 keys spread over the slots.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer rdb.Close()
	for i := range 100 {
		if err := rdb.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range masters {
		if n, err := nodeDo(ctx, nil, m.Addr(), "DBSIZE").Int(); err != nil || n == 0 {
			t.Errorf("master %d %s holds %d keys (%v), want some of the 100", i, m.Addr(), n, err)
		}
	}

	// Failover loses no write a client got an answer for, while a client
	// INCRs a key of the shard as fast as it can.
	shard := shardOf(ctx, t, c, rdb, "n")
	oldMaster, replica, err := c.Shard(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	w := startCounter(rdb)
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	if err := c.Failover(ctx, replica); err != nil {
		t.Fatal(err)
	}
	t.Logf("Failover of shard %d to %s in %v", shard, replica.Addr(), time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	acked, failed := w.stop()
	got, err := rdb.Get(ctx, "n").Int64()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Failover: %d INCRs answered, %d failed; counter %d", acked, failed, got)
	if acked < 100 {
		t.Errorf("only %d INCRs answered around the failover", acked)
	}
	if got < acked || got > acked+failed {
		t.Errorf("counter = %d after %d answered INCRs and %d failed ones: answered writes were lost", got, acked, failed)
	}
	if m, r, err := c.Shard(ctx, shard); err != nil || m != replica || r != oldMaster {
		t.Errorf("after Failover: Shard(%d) = %v, %v; want master %s, replica %s", shard, addrsOf([]*Redis{m, r}), err, replica.Addr(), oldMaster.Addr())
	}

	// A crash of a master: its replica takes over on its own.
	if err := nodeDo(ctx, nil, replica.Addr(), "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	killed, err := c.KillMaster(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	if killed != replica {
		t.Errorf("KillMaster(%d) killed %s, want %s", shard, killed.Addr(), replica.Addr())
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("healthy %v after KillMaster(%d)", time.Since(start).Round(time.Millisecond), shard)
	if m, err := c.Masters(ctx); err != nil || m[shard] != oldMaster {
		t.Errorf("after KillMaster: Masters = %v, %v; want %s for shard %d", addrsOf(m), err, oldMaster.Addr(), shard)
	}
	// go-redis reloads its slot map on MOVED, or when it is older than
	// ClusterStateReloadInterval (60 s) and a command runs, not on a
	// refused connection (go-redis issue 3979): reload it.
	rdb.ReloadState(ctx)
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		if v, err := rdb.Get(ctx, "n").Int64(); err != nil || v != got {
			return fmt.Errorf("n = %d, %v; want %d", v, err, got)
		}
		return nil
	}); err != nil {
		t.Errorf("after KillMaster: %v", err)
	}
	// The killed node comes back as the replica, empty, and syncs.
	start = time.Now()
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted node %s a replica again in %v", killed.Addr(), time.Since(start).Round(time.Millisecond))
	if m, r, err := c.Shard(ctx, shard); err != nil || m != oldMaster || r != killed {
		t.Errorf("after the restart: Shard(%d) = %v, %v; want master %s, replica %s", shard, addrsOf([]*Redis{m, r}), err, oldMaster.Addr(), killed.Addr())
	}

	c.Close()
	c.Close()
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Close: %v", c.Dir, err)
	}
	for _, addr := range c.Addrs() {
		if err := nodeDo(ctx, nil, addr, "PING").Err(); err == nil {
			t.Errorf("%s answers PING after Close", addr)
		}
	}
}

// shardOf returns the shard whose master serves key.
func shardOf(ctx context.Context, t *testing.T, c *RedisCluster, rdb *redis.ClusterClient, key string) int {
	t.Helper()
	mc, err := rdb.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range masters {
		if m.Addr() == mc.Options().Addr {
			return i
		}
	}
	t.Fatalf("the master of %q, %s, is no shard's master (%v)", key, mc.Options().Addr, addrsOf(masters))
	return 0
}

// addrsOf lists the addresses of nodes ("-" for nil).
func addrsOf(nodes []*Redis) []string {
	var a []string
	for _, n := range nodes {
		if n == nil {
			a = append(a, "-")
		} else {
			a = append(a, n.Addr())
		}
	}
	return a
}

// After a failed test the cluster's processes are gone but its directory
// stays, with every node's log and nodes.conf.
func TestRedisClusterKeepsLogsOnFailure(t *testing.T) {
	t.Parallel()
	ft := &failedTB{TB: t}
	c := StartRedisCluster(ft)
	addrs := c.Addrs()
	t.Cleanup(func() { os.RemoveAll(c.Dir) })
	if len(ft.cleanups) != 1 {
		t.Fatalf("StartRedisCluster registered %d cleanups, want 1", len(ft.cleanups))
	}
	ft.cleanups[0]()
	for i := range addrs {
		for _, f := range []string{"redis.log", "nodes.conf"} {
			if fi, err := os.Stat(filepath.Join(c.Dir, fmt.Sprintf("node-%d", i+1), f)); err != nil || fi.Size() == 0 {
				t.Errorf("node %d: %s not kept: %v", i+1, f, err)
			}
		}
		if err := nodeDo(context.Background(), nil, addrs[i], "PING").Err(); err == nil {
			t.Errorf("%s answers PING after the cleanup", addrs[i])
		}
	}
	if fi, err := os.Stat(filepath.Join(c.Dir, "cluster-create.log")); err != nil || fi.Size() == 0 {
		t.Errorf("cluster-create.log not kept: %v", err)
	}
}

// failedTB is a test that has failed, whose cleanups the test runs.
type failedTB struct {
	testing.TB
	cleanups []func()
}

func (f *failedTB) Failed() bool      { return true }
func (f *failedTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

// A cluster started with ClusterTLS requiring client certificates: every
// node refuses plaintext and a TLS client without a certificate, the
// nodes report their TLS ports (CLUSTER SLOTS), the replicas replicate
// over TLS, and a cluster client with the CA and the client certificate
// reaches every shard.
func TestRedisClusterTLS(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := MakeTLSFiles(t)
	start := time.Now()
	c := StartRedisCluster(t, ClusterTLS(f), ClusterArgs("--tls-auth-clients", "yes"))
	t.Logf("Redis Cluster over TLS ready in %v: nodes %v", time.Since(start).Round(time.Millisecond), c.Addrs())
	if c.TLS != f {
		t.Errorf("TLS = %v, want the cluster's PKI", c.TLS)
	}
	tc, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	noCert, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	noCert.Certificates = nil
	for _, addr := range c.Addrs() {
		if err := nodeDo(ctx, nil, addr, "PING").Err(); err == nil {
			t.Errorf("%s answers PING in plaintext", addr)
		}
		if err := nodeDo(ctx, noCert, addr, "PING").Err(); err == nil {
			t.Errorf("%s answers PING over TLS without a client certificate", addr)
		}
		if got, err := nodeDo(ctx, tc, addr, "CONFIG", "GET", "tls-cluster").Result(); err != nil || fmt.Sprint(got) != "map[tls-cluster:yes]" {
			t.Errorf("%s: CONFIG GET tls-cluster = %v, %v", addr, got, err)
		}
	}
	// CLUSTER SLOTS names the masters at their TLS addresses (a replica
	// only once its replication offset is above 0, see view).
	slots, err := nodeDo(ctx, tc, c.Addrs()[0], "CLUSTER", "SLOTS").Slice()
	if err != nil {
		t.Fatal(err)
	}
	var reported []string
	for _, s := range slots {
		for _, n := range s.([]any)[2:] {
			n := n.([]any)
			reported = append(reported, fmt.Sprintf("%s:%d", n[0], n[1]))
		}
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range masters {
		if !slices.Contains(reported, m.Addr()) {
			t.Errorf("CLUSTER SLOTS names %v, not the master %s", reported, m.Addr())
		}
	}
	for _, a := range reported {
		if !slices.Contains(c.Addrs(), a) {
			t.Errorf("CLUSTER SLOTS names %s, not a TLS address of the cluster %v", a, c.Addrs())
		}
	}
	replicas, err := c.Replicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ClusterShards {
		if err := replicating(ctx, tc, replicas[i].Addr(), masters[i].Addr()); err != nil {
			t.Errorf("shard %d: %v", i, err)
		}
	}

	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()[:1], TLSConfig: tc})
	defer rdb.Close()
	for i := range 100 {
		if err := rdb.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range masters {
		if n, err := nodeDo(ctx, tc, m.Addr(), "DBSIZE").Int(); err != nil || n == 0 {
			t.Errorf("master %d %s holds %d keys (%v), want some of the 100", i, m.Addr(), n, err)
		}
	}

	// A failover over the TLS cluster bus.
	_, replica, err := c.Shard(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := c.Failover(ctx, replica); err != nil {
		t.Fatal(err)
	}
	t.Logf("Failover of shard 0 to %s in %v", replica.Addr(), time.Since(start).Round(time.Millisecond))
}
