package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestClusterCrash is the kill -9 test on a Redis Cluster (3 masters, 3
// replicas): the daemon applies per slot while writers change rows. It
// crashes several times between the slot groups of a batch and its
// checkpoint (the process kills itself there: CACHESYNC_CRASH_AFTER_SLOTS),
// is killed at random moments, and a master is killed mid-stream (its
// replica takes over). After the writers stop and the daemon caught up,
// every key the rules own equals MySQL.
func TestClusterCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	t0 := time.Now()
	bin := testenv.BuildCachesync(t)
	my := testenv.StartMariaDB(t)
	c := testenv.StartRedisCluster(t)
	db := my.DB(t, crashSchema)
	db.SetMaxOpenConns(writerCount + 4)
	createCrashTables(t, db)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	t.Cleanup(func() { rdb.Close() })
	dir := t.TempDir()
	const placeholder = "redis-section-replaced"
	cfg := crashConfig(my.Addr(), placeholder, uint32(1000+rand.N(1<<30)), 200)
	old := "redis:\n  addr: " + placeholder + "\n"
	if !strings.Contains(cfg, old) {
		t.Fatalf("crashConfig has no %q to replace", old)
	}
	cfg = strings.Replace(cfg, old, "redis:\n  mode: cluster\n  addrs: ["+strings.Join(c.Addrs(), ", ")+"]\n", 1)
	path := filepath.Join(dir, "cachesync.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &testenv.Child{Bin: bin, Config: path, Dir: dir}
	t.Cleanup(d.KillCurrent)
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d; set-up %s", seed, time.Since(t0).Round(time.Millisecond))
	rng := rand.New(rand.NewPCG(seed, 0))

	wl := startWorkload(t, db, rdb, seed, rng, 0)
	defer wl.stop()
	r := d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return snapshotDone(ctx, rdb) || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d: the first snapshot did not finish (%v)%s", r.N, err, r.Tail())
	}
	wl.notesOn.Store(true)

	// Crashes between the slot groups of a batch and its checkpoint.
	const injected = 6
	for i := range injected {
		r.Kill(t)
		r = d.StartEnv(t, "CACHESYNC_CRASH_AFTER_SLOTS="+strconv.Itoa(1+rng.IntN(40)))
		if err := waitUntil(60*time.Second, r.Exited); err != nil {
			t.Fatalf("run %d (crash %d) did not crash itself between slot groups within 60s%s", r.N, i+1, r.Tail())
		}
		if err := r.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("run %d (crash %d) ended with %v, want its own SIGKILL%s", r.N, i+1, err, r.Tail())
		}
		r = d.Start(t)
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		select {
		case err := <-wl.werr:
			t.Fatalf("writer: %v", err)
		default:
		}
	}
	// A master killed mid-stream: its replica takes over. /readyz says
	// so meanwhile (the writes to its slots fail), then recovers.
	if err := waitUntil(30*time.Second, func() bool { code, _ := getReadyz(r); return code == http.StatusOK }); err != nil {
		t.Fatalf("run %d not ready before the failover%s", r.N, r.Tail())
	}
	shard := rng.IntN(testenv.ClusterShards)
	if _, err := c.KillMaster(ctx, shard); err != nil {
		t.Fatal(err)
	}
	tKill := time.Now()
	stopPoll, dips := make(chan struct{}), make(chan int, 1)
	go func() { // until the cluster is healthy again and 2 s more
		n := 0
		defer func() { dips <- n }()
		for {
			if code, _ := getReadyz(r); code != http.StatusOK {
				n++
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := c.WaitHealthy(fctx)
	cancel()
	if err != nil {
		t.Fatalf("cluster after killing the master of shard %d: %v", shard, err)
	}
	t.Logf("master of shard %d killed; cluster healthy again after %s", shard, time.Since(tKill).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // writes go on through the new master
	close(stopPoll)
	if n := <-dips; n == 0 {
		t.Errorf("/readyz said 200 all through the failover")
	} else {
		t.Logf("/readyz failed %d times (polled every 100 ms) during the failover", n)
	}
	wl.stop()
	select {
	case err := <-wl.werr:
		t.Fatalf("writer: %v", err)
	default:
	}
	if r.Exited() {
		t.Fatalf("run %d exited on its own: %v%s", r.N, r.Err(), r.Tail())
	}
	catchUp(t, db, rdb, r)
	mism, stats := compare(t, db, rdb, wl.kept())
	t.Logf("%d row changes in %d transactions; %d crashes between slot groups, %d daemon runs, 1 master failover; checked %s; mismatches %d; total %s",
		wl.rows.Load(), wl.txns.Load(), injected, d.Runs(), stats, len(mism), time.Since(t0).Round(time.Millisecond))
	if len(mism) > 0 {
		t.Fatalf("%d keys differ from MySQL; first ones:\n  %s", len(mism), strings.Join(mism[:min(len(mism), 25)], "\n  "))
	}
	r.Term(t, termWithin)
}
