package main

// The Sentinel tests run the daemon binary in redis.mode sentinel against a
// private Sentinel topology (testenv.StartSentinel): writers change rows of
// a private MariaDB while the Sentinels fail over from the master to its
// in-sync replica. After the writers stop and the daemon caught up, every
// key the rules own must equal MySQL on the new master. They reuse the
// crash test's schema, rules, writers and compare.

import (
	"bufio"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

const (
	sentinelWorkBefore  = 3 * time.Second // writes before the failover
	sentinelWorkAfter   = 3 * time.Second // and after it
	sentinelBatch       = 500             // sink.batch_changes: many script calls
	sentinelFailoverMax = 30 * time.Second
)

// TestSentinelFailover: a plain SENTINEL FAILOVER (testenv's Failover).
// Sentinel lets the old master take the batches the daemon applies between
// the replica's promotion and go-redis's switch to it (about a second); they
// are lost with it. The new master's checkpoint is then older than what the
// daemon applied, the apply script refuses the next batch (CSREWIND) and the
// daemon replays the binlog from that checkpoint, so nothing stays stale.
// (Before the checkpoint compare-and-set, 5,900 to 11,300 keys stayed stale
// in this test.)
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("real-server failover test: skipped in -short mode")
	}
	res := runSentinelFailover(t, (*testenv.Sentinel).Failover)
	if len(res.mism) > 0 {
		t.Errorf("%d keys differ from MySQL after the failover; first ones:\n  %s", len(res.mism), strings.Join(head(res.mism), "\n  "))
	}
	// The old master takes batches for about a second after the replica
	// was promoted (the writers never pause): they are lost with it, and
	// the new master's older checkpoint must be noticed.
	n := res.warns["redis went back in time: replaying the binlog from its stored checkpoint"]
	t.Logf("rewinds: %d", n)
	if n == 0 {
		t.Errorf("the failover to a replica that was behind went unnoticed")
	}
}

// TestSentinelFailoverPaused: a failover that pauses writes on the old
// master until it is a replica (testenv's FailoverPaused, what Redis's
// FAILOVER command does) leaves no batch on the old master: nothing to
// replay, nothing stale.
func TestSentinelFailoverPaused(t *testing.T) {
	if testing.Short() {
		t.Skip("real-server failover test: skipped in -short mode")
	}
	res := runSentinelFailover(t, (*testenv.Sentinel).FailoverPaused)
	if len(res.mism) > 0 {
		t.Errorf("%d keys differ from MySQL after the failover; first ones:\n  %s", len(res.mism), strings.Join(head(res.mism), "\n  "))
	}
	if n := res.warns["redis went back in time: replaying the binlog from its stored checkpoint"]; n > 0 {
		t.Errorf("the daemon replayed %d times after a failover that lost no write", n)
	}
}

// sentinelResult is what runSentinelFailover found.
type sentinelResult struct {
	mism  []string       // keys that differ from MySQL, from compare
	warns map[string]int // warning lines of the daemon's log by message
}

// runSentinelFailover starts the servers and the daemon, runs the writers
// for sentinelWorkBefore, fails over with failover, runs them for
// sentinelWorkAfter more, waits until the daemon caught up and compares
// every key with MySQL. It fails the test for everything but mismatches,
// which it returns: the daemon exiting, not catching up, validate not
// reaching the new master, a panic or data race in its log.
func runSentinelFailover(t *testing.T, failover func(*testenv.Sentinel, context.Context) error) sentinelResult {
	t0 := time.Now()
	ctx := context.Background()
	bin := testenv.BuildCachesync(t)
	my := testenv.StartMariaDB(t)
	s := testenv.StartSentinel(t)
	db := my.DB(t, crashSchema)
	db.SetMaxOpenConns(writerCount + 4)
	// The test reads through the Sentinels too: always from the master.
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName(), SentinelAddrs: s.SentinelAddrs()})
	t.Cleanup(func() { rdb.Close() })
	createCrashTables(t, db)
	// Daemon logs stay on disk when the test fails.
	dir, err := os.MkdirTemp("", "cachesync-sentinel-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon config and logs kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	cfg := filepath.Join(dir, "cachesync.yaml")
	if err := os.WriteFile(cfg, []byte(sentinelConfig(t, my.Addr(), s, uint32(1000+rand.N(1<<30)))), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &testenv.Child{Bin: bin, Config: cfg, Dir: dir}
	t.Cleanup(d.KillCurrent) // registered last: runs before the servers go
	tSetup := time.Since(t0)

	// Rows, the application's inv: keys, and writers that run from here
	// to the end of the workload.
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	wl := startWorkload(t, db, rdb, seed, rand.New(rand.NewPCG(seed, 0)), 0)
	defer wl.stop()

	r := d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return snapshotDone(ctx, rdb) || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d: no checkpoint after the snapshot (%v)%s", r.N, err, r.Tail())
	}
	oldMaster, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The first checkpoint is written: every notes change from here on
	// comes after it.
	wl.notesOn.Store(true)
	tWork := time.Now()
	time.Sleep(sentinelWorkBefore)
	before := wl.rows.Load()
	fctx, cancel := context.WithTimeout(ctx, sentinelFailoverMax)
	tFail := time.Now()
	err = failover(s, fctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	dFail := time.Since(tFail)
	newMaster, err := s.Master(ctx)
	if err != nil || newMaster == oldMaster {
		t.Fatalf("after the failover the master is %v (%v), was %s", newMaster, err, oldMaster.Addr())
	}
	t.Logf("failover %s -> %s in %s, after %d row changes", oldMaster.Addr(), newMaster.Addr(), dFail.Round(time.Millisecond), before)
	time.Sleep(sentinelWorkAfter)
	wl.stop()
	select {
	case err := <-wl.werr:
		t.Fatalf("writer: %v", err)
	default:
	}
	tWorkload := time.Since(tWork)
	if r.Exited() {
		t.Fatalf("run %d exited during the workload: %v%s", r.N, r.Err(), r.Tail())
	}

	// Catch up: a marker row written after everything else must arrive at
	// the new master.
	tCatch := time.Now()
	catchUp(t, db, rdb, r)
	tCatchUp := time.Since(tCatch)
	for _, n := range s.Nodes() {
		c := redis.NewClient(&redis.Options{Addr: n.Addr()})
		cp := c.HGetAll(ctx, "cachesync:checkpoint").Val()
		t.Logf("node %s (%s): checkpoint %s:%s, seq %s", n.Addr(), c.Do(ctx, "ROLE").String(), cp["file"], cp["pos"], c.Get(ctx, "cachesync:seq").Val())
		c.Close()
	}
	if rdb.Get(ctx, "marker:1").Val() != "1" || nodeGet(ctx, t, newMaster.Addr(), "marker:1") != "1" {
		t.Fatalf("marker:1 is not on the new master %s", newMaster.Addr())
	}

	mism, stats := compare(t, db, rdb, wl.kept())
	t.Logf("workload %s: %d row changes in %d transactions by %d writers, %d of them from the failover on; caught up %s after the writers stopped; set-up %s",
		tWorkload.Round(time.Millisecond), wl.rows.Load(), wl.txns.Load(), writerCount, wl.rows.Load()-before,
		tCatchUp.Round(time.Millisecond), tSetup.Round(time.Millisecond))
	t.Logf("checked %s on the new master %s; mismatches: %d", stats, newMaster.Addr(), len(mism))

	// validate reaches the new master through the Sentinels.
	cmd := exec.Command(bin, "validate", "-config", cfg)
	cmd.Env = testenv.ChildEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if want := `redis sentinel master "` + s.MasterName() + `" at ` + newMaster.Addr(); err != nil || !strings.Contains(string(out), want) {
		t.Errorf("cachesync validate: %v\n%s%s\nwant a line containing %q", err, out, stderr.String(), want)
	} else {
		t.Logf("cachesync validate: %s", strings.TrimSpace(string(out)))
	}

	r.Term(t, termWithin)
	warns := logSummary(t, r)
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
	return sentinelResult{mism: mism, warns: warns}
}

// sentinelConfig is crashConfig with the redis section of sentinel mode.
func sentinelConfig(t *testing.T, mysqlAddr string, s *testenv.Sentinel, serverID uint32) string {
	t.Helper()
	const placeholder = "redis-section-replaced"
	cfg := crashConfig(mysqlAddr, placeholder, serverID, sentinelBatch)
	old := "redis:\n  addr: " + placeholder + "\n"
	if !strings.Contains(cfg, old) {
		t.Fatalf("crashConfig has no %q to replace", old)
	}
	return strings.Replace(cfg, old, "redis:\n  mode: sentinel\n  master_name: "+s.MasterName()+
		"\n  sentinel_addrs: ["+strings.Join(s.SentinelAddrs(), ", ")+"]\n", 1)
}

// nodeGet reads key on one server, whatever its role.
func nodeGet(ctx context.Context, t *testing.T, addr, key string) string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	v, err := c.Get(ctx, key).Result()
	if err != nil && err != redis.Nil {
		t.Fatalf("GET %s on %s: %v", key, addr, err)
	}
	return v
}

// logSummary fails the test on a panic or a data race in the run's log,
// logs its error and warning lines by message and returns the warnings'
// counts by message. Unlike Child.CheckLogs it does not fail on error
// lines: a failed apply while the master changes is expected (it is
// retried).
func logSummary(t *testing.T, r *testenv.ChildRun) map[string]int {
	t.Helper()
	f, err := os.Open(r.Log)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer f.Close()
	counts := map[string]int{}
	warns := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var m struct{ Level, Message, Error string }
		_ = json.Unmarshal([]byte(line), &m)
		switch {
		case strings.Contains(line, "DATA RACE"), strings.HasPrefix(line, "panic:"), strings.HasPrefix(line, "fatal error:"):
			t.Errorf("%s: %s", r.Log, line)
		case m.Level == "error" || m.Level == "warn":
			counts[m.Level+": "+m.Message+": "+m.Error]++
			if m.Level == "warn" {
				warns[m.Message]++
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Errorf("read %s: %v", r.Log, err)
	}
	for k, n := range counts {
		t.Logf("run %d log: %dx %s", r.N, n, k)
	}
	return warns
}
