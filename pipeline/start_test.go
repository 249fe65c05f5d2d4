package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// TestStartModes: without a checkpoint an invalidate-only pipeline starts
// where mysql.start says (current, position, gtid); once a checkpoint
// exists it wins. An idle stream stays connected (heartbeats).
func TestStartModes(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	e.exec("CREATE TABLE s (id INT PRIMARY KEY, v INT NOT NULL)",
		"INSERT INTO s VALUES (1, 0), (2, 0), (3, 0), (4, 0)")
	rules := []sink.RuleConfig{{Table: e.schema + ".s", Kind: sink.KindInvalidate, Keys: []string{e.p + "k:{id}"}}}
	prime := func(ids ...int) {
		t.Helper()
		for _, id := range ids {
			if err := e.rdb.Set(ctx, fmt.Sprintf("%sk:%d", e.p, id), "cached", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	cached := func(id int) bool {
		t.Helper()
		n, err := e.rdb.Exists(ctx, fmt.Sprintf("%sk:%d", e.p, id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	reset := func() {
		t.Helper()
		if err := e.rdb.Del(ctx, e.ks.Checkpoint()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var gtid string
	if err := e.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	pos := e.position()
	e.exec("UPDATE s SET v = 1 WHERE id = 1") // before every start below
	prime(1, 2)

	// current: the earlier update is not replayed.
	r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.Start.From = binlog.FromCurrent })
	r.ready(t)
	e.exec("UPDATE s SET v = 1 WHERE id = 2")
	e.sync(r)
	if !cached(1) || cached(2) {
		t.Errorf("from=current: k:1 cached %v (want true), k:2 cached %v (want false)", cached(1), cached(2))
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		start binlog.StartConfig
	}{
		{"position", binlog.StartConfig{From: binlog.FromPosition, Position: pos.String()}},
		{"gtid", binlog.StartConfig{From: binlog.FromGTID, GTID: gtid}},
	} {
		reset()
		prime(1, 2)
		r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.Start = tc.start })
		e.sync(r)
		if cached(1) || cached(2) {
			t.Errorf("from=%s: updates after the start point not replayed: k:1 cached %v, k:2 cached %v", tc.name, cached(1), cached(2))
		}
		if cp, _ := e.checkpoint(); cp.Pos.File == "" || cp.Version == 0 {
			t.Errorf("from=%s: checkpoint %+v", tc.name, cp)
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}

	// A checkpoint wins over mysql.start.
	prime(1, 2, 3)
	e.exec("UPDATE s SET v = 2 WHERE id = 3")
	r = e.start(rules, func(b *binlog.Config, _ *sink.Config) {
		b.Start = binlog.StartConfig{From: binlog.FromPosition, Position: pos.String()}
	})
	e.sync(r)
	if !cached(1) || !cached(2) || cached(3) {
		t.Errorf("resume from checkpoint: k:1 %v k:2 %v (want cached: not replayed), k:3 %v (want invalidated)", cached(1), cached(2), cached(3))
	}

	// Idle for more than 3 heartbeats: no reconnect.
	time.Sleep(3500 * time.Millisecond)
	e.exec("UPDATE s SET v = 3 WHERE id = 4")
	prime(4)
	e.exec("UPDATE s SET v = 4 WHERE id = 4")
	e.sync(r)
	if cached(4) {
		t.Error("k:4 not invalidated after an idle period")
	}
	if n := r.metric(t, "cachesync_binlog_reconnects_total"); n != 0 {
		t.Errorf("%v reconnects of an idle stream: heartbeats do not keep it alive\n%s", n, r.log.tail(5))
	}
}

// TestEvictionPolicy: a leader refuses a Redis that may evict any key
// (allkeys-*), warns about volatile-*, and streams under noeviction. On a
// cluster run the policy changes on the masters of the shared cluster (set
// back after), on one master at a time: every node must be read, not the
// one a keyless command goes to.
func TestEvictionPolicy(t *testing.T) {
	ctx := context.Background()
	var (
		e     *env
		nodes []redis.Cmdable // where the policy changes
	)
	if sharedCluster != nil {
		e = newEnv(t, nil, nil)
		masters, err := sharedCluster.Masters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range masters {
			c := redis.NewClient(&redis.Options{Addr: m.Addr()})
			t.Cleanup(func() {
				if err := c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
					t.Errorf("set the policy of %s back: %v", m.Addr(), err)
				}
				c.Close()
			})
			nodes = append(nodes, c)
		}
	} else {
		rs := testenv.StartRedis(t) // private: its configuration changes
		e = newEnv(t, nil, rs)
		nodes = []redis.Cmdable{e.rdb}
	}
	e.exec("CREATE TABLE ev (id INT PRIMARY KEY, v INT NOT NULL)")
	rules := []sink.RuleConfig{{Table: e.schema + ".ev", Kind: sink.KindMirror, Key: e.p + "ev:{id}", Column: "v"}}
	// policy sets p on node i, noeviction on the others.
	policy := func(i int, p string) {
		t.Helper()
		for j, n := range nodes {
			v := "noeviction"
			if j == i {
				v = p
			}
			if err := n.ConfigSet(ctx, "maxmemory-policy", v).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}

	for i := range nodes {
		policy(i, "allkeys-lru")
		r := e.start(rules, nil)
		waitFor(t, func() error {
			select {
			case <-r.done:
				return nil
			default:
				return fmt.Errorf("pipeline still running with an allkeys-lru Redis (node %d of %d)", i+1, len(nodes))
			}
		}, 20*time.Second)
		if !errors.Is(r.err, sink.ErrEvictionPolicy) || !strings.Contains(r.err.Error(), "allkeys-lru") {
			t.Errorf("node %d of %d: Run = %v, want sink.ErrEvictionPolicy naming allkeys-lru", i+1, len(nodes), r.err)
		}
	}

	policy(len(nodes)-1, "volatile-lru")
	r := e.start(rules, nil)
	r.ready(t)
	if !r.log.contains("maxmemory-policy is volatile-lru") {
		t.Errorf("no warning about volatile-lru in the log:\n%s", r.log.tail(10))
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	policy(-1, "")
	r = e.start(rules, nil)
	r.ready(t)
	e.exec("INSERT INTO ev VALUES (1, 7)")
	e.sync(r)
	if v := e.rdb.Get(ctx, e.p+"ev:1").Val(); v != "7" {
		t.Errorf("ev:1 = %q, want 7", v)
	}
	if r.log.contains("maxmemory-policy") {
		t.Errorf("a warning about noeviction:\n%s", r.log.tail(10))
	}
}
