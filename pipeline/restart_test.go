package pipeline_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// TestMySQLRestart: MariaDB crashes (SIGKILL) and comes back while writes
// go on; the pipeline reconnects, resumes where it was and ends with Redis
// equal to MySQL.
func TestMySQLRestart(t *testing.T) {
	my := testenv.StartMariaDB(t) // private: it gets killed
	e := newEnv(t, my, nil)
	rules := e.itemRules()
	e.exec(itemsTable)
	w := e.startWorkload(21, 150)
	w.waitTxns(t, 50)
	r := e.start(rules, nil)
	r.ready(t)
	w.waitTxns(t, 200)

	if err := my.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() error {
		if r.p.Ready() == nil {
			return fmt.Errorf("pipeline still ready with MariaDB down")
		}
		return nil
	}, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if err := my.Start(); err != nil {
		t.Fatal(err)
	}
	w.waitTxns(t, 300)
	r.ready(t)
	w.stop()
	e.sync(r)
	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_binlog_reconnects_total"); n < 1 {
		t.Errorf("reconnects_total = %v, want at least 1", n)
	}
	t.Logf("%d transactions, %d failed while MariaDB was down", w.txns.Load(), w.fails.Load())
}

// TestRedisRestart: Redis restarts empty while writes go on; the pipeline
// notices (the checkpoint is gone), rebuilds from a snapshot and ends with
// Redis equal to MySQL.
func TestRedisRestart(t *testing.T) {
	standaloneOnly(t, "it kills and restarts a private Redis; on a cluster, TestRedisLossNoticedByLease "+
		"deletes the test's keys under a running pipeline, and cmd/cachesync TestClusterCrash kills a master mid-stream")
	rs := testenv.StartRedis(t) // private: it gets killed
	e := newEnv(t, nil, rs)
	rules := e.itemRules()
	e.exec(itemsTable)
	w := e.startWorkload(22, 150)
	w.waitTxns(t, 50)
	r := e.start(rules, nil)
	r.ready(t)
	w.waitTxns(t, 200)
	e.sync(r)

	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	w.waitTxns(t, 50)
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	w.waitTxns(t, 300)
	w.stop()
	e.sync(r)
	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_redis_resets_total"); n < 1 {
		t.Errorf("redis_resets_total = %v, want at least 1 (the reset went unnoticed)", n)
	}
	if !r.log.contains("redis lost its data") {
		t.Error("no log line about Redis having lost its data")
	}
}

// TestRedisLossNoticedByLease: Redis loses its data while the leader's
// lease vanishes with it, so the leader may notice the loss of its lease
// before any refused batch. Whatever noticed, the next term must see that
// the checkpoint it saw is gone and snapshot, even with start.from=current.
func TestRedisLossNoticedByLease(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	w := e.startWorkload(23, 100)
	w.waitTxns(t, 30)
	r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.Start.From = binlog.FromCurrent })
	r.ready(t)
	w.waitTxns(t, 100)
	w.stop()
	e.sync(r)

	// Another holder until Redis has lost everything of this test (on a
	// cluster that is 16,384 slot records more, each writer fences them
	// all): the leader steps down and cannot come back before.
	lease := e.ks.Leader(pipeline.LeaseName)
	if err := e.rdb.Set(ctx, lease, "1 someone-else", 0).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntilTrue(t, "the leader stepped down", func() bool { return r.p.Role() == "standby" })
	keys, err := scanKeys(ctx, e.rdb, e.p+"*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			if k != lease {
				p.Del(ctx, k)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Del(ctx, lease).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntilTrue(t, "a checkpoint again", func() bool { _, ok := e.checkpoint(); return ok })
	e.sync(r)
	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_redis_resets_total"); n != 1 {
		t.Errorf("redis_resets_total = %v, want 1", n)
	}
}

// TestStepDownWhenFenced: another process takes the lease while the
// pipeline leads (here by overwriting it, as a takeover after a pause
// would). The pipeline must stop applying at once, stand by while the
// other holds the lease, and resume from the stored checkpoint when it is
// free again, with nothing lost.
func TestStepDownWhenFenced(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	r := e.start(rules, nil)
	r.ready(t)
	e.exec("INSERT INTO items (id, cat, price, status) VALUES (1, 1, 1.00, 'on_sale')")
	e.sync(r)

	lease := e.ks.Leader(pipeline.LeaseName)
	if err := e.rdb.Set(ctx, lease, "1 someone-else", 4*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	e.exec("INSERT INTO items (id, cat, price, status) VALUES (2, 1, 2.00, 'on_sale')")
	waitUntilTrue(t, "the pipeline stood by", func() bool { return r.p.Role() == "standby" })
	if n := e.rdb.Exists(ctx, e.p+"json:2").Val(); n != 0 {
		t.Fatalf("a row committed after the lease was taken was applied while another process held it")
	}
	fenced := r.metric(t, "cachesync_sink_errors_total") // refusals of every kind
	lost := r.metric(t, "cachesync_leader_transitions_total")
	t.Logf("stepped down after %v refusals; lease transitions %v", fenced, lost)
	if fenced+lost < 2 { // acquired, then lost or fenced
		t.Errorf("no refusal and no lost lease counted (errors %v, transitions %v)", fenced, lost)
	}
	if err := r.p.Ready(); err != nil {
		t.Errorf("a standby is ready; Ready = %v", err)
	}
	// The other holder's lease expires: the pipeline leads again and
	// applies what was committed meanwhile.
	e.sync(r)
	e.checkConsistent(rules, "items")
	if r.p.Role() != "leader" {
		t.Errorf("role %s after the lease was free again", r.p.Role())
	}
}

func waitUntilTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGracefulStop: cancelling Run during a steady workload returns nil; a
// new pipeline resumes from the checkpoint (no snapshot) and ends with
// Redis equal to MySQL. Invalidation messages go on across the restart
// without a gap in seq.
func TestGracefulStop(t *testing.T) {
	e := newEnv(t, nil, nil)
	rules := e.itemRules()
	e.exec(itemsTable)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := e.rdb.Subscribe(ctx, e.chann)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seqs []int64
	)
	go func() {
		for {
			m, err := sub.ReceiveMessage(ctx)
			if err != nil {
				return
			}
			var seq int64
			fmt.Sscanf(m.Payload, `{"seq":%d,`, &seq)
			mu.Lock()
			seqs = append(seqs, seq)
			mu.Unlock()
		}
	}()

	w := e.startWorkload(23, 100)
	w.waitTxns(t, 30)
	for i := range 3 {
		r := e.start(rules, nil)
		r.ready(t)
		if i > 0 && r.log.contains("snapshot: beginning") {
			t.Errorf("run %d took a snapshot instead of resuming from the checkpoint", i+1)
		}
		w.waitTxns(t, 150)
		if err := r.stop(t); err != nil {
			t.Fatalf("run %d: Run after cancel = %v, want nil", i+1, err)
		}
		if n := r.metric(t, "cachesync_redis_resets_total"); n != 0 {
			t.Errorf("run %d: %v resets", i+1, n)
		}
		w.waitTxns(t, 50) // written while no pipeline runs
	}
	r := e.start(rules, nil)
	w.waitTxns(t, 100)
	w.stop()
	e.sync(r)
	e.checkConsistent(rules, "items")

	last, err := e.rdb.Get(ctx, e.ks.Seq()).Int64()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(seqs)) < last {
			return fmt.Errorf("%d messages, seq counter %d", len(seqs), last)
		}
		return nil
	}, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("message %d has seq %d, want %d: a gap or repeat across restarts", i, s, i+1)
		}
	}
	t.Logf("%d transactions, %d messages over 4 runs", w.txns.Load(), len(seqs))
}
