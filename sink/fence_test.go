package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// fenceEnv is one Applier reused across Runs, as the pipeline reuses it
// across terms and restarts.
type fenceEnv struct {
	t   *testing.T
	rdb *redis.Client
	a   *Applier
	ks  keyspace.Keyspace
	ch  string
	// bulk: rows each stock transaction adds to its own (other ids), so
	// that batches take the direct path (see Applier.applyDirect).
	bulk int
}

func newFenceEnv(t *testing.T) *fenceEnv {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	cfg := Config{Rules: []RuleConfig{
		{Table: "shop.goods", Kind: KindMirror, Key: "m:{id}", Column: "stock"},
		{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{"inv:{id}"}},
	}}
	cfg.SetDefaults()
	a, err := NewApplier(cfg, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &fenceEnv{t: t, rdb: rdb, a: a, ks: keyspace.Keyspace{Prefix: cfg.KeyPrefix}, ch: cfg.Channel}
}

// run applies txns in one Run and returns what Run returned: nil once
// all were applied, or the refusal.
func (e *fenceEnv) run(r Resume, txns ...*binlog.Txn) error {
	e.t.Helper()
	in := make(chan *binlog.Txn, len(txns))
	for _, t := range txns {
		in <- t
	}
	close(in)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.a.Run(ctx, in, r)
}

// stored is the stored checkpoint (fails the test without one).
func (e *fenceEnv) stored() Checkpoint {
	e.t.Helper()
	cp, ok, err := ReadCheckpoint(context.Background(), e.rdb, e.ks)
	if err != nil || !ok {
		e.t.Fatalf("ReadCheckpoint: %v, exists %v", err, ok)
	}
	return cp
}

func (e *fenceEnv) exists(key string) bool {
	e.t.Helper()
	n, err := e.rdb.Exists(context.Background(), key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return n == 1
}

// stock is a transaction setting m:id to n, with e.bulk more rows (ids
// 1000·id + j).
func (e *fenceEnv) stock(id, n int32) *binlog.Txn {
	t := txn(pos("binlog.000001", uint32(1000+100*id)), ins(id, "x", n, "on"))
	for j := range int32(e.bulk) {
		t.Changes = append(t.Changes, ins(1000*id+j, "x", n, "on"))
	}
	return t
}

// bothPaths runs test with single-row batches (the script alone) and with
// batches that take the direct path, which must refuse and apply the same.
func bothPaths(t *testing.T, test func(t *testing.T, e *fenceEnv)) {
	for _, bulk := range []int{0, directMin} {
		t.Run(fmt.Sprintf("rows=%d", bulk+1), func(t *testing.T) {
			e := newFenceEnv(t)
			e.bulk = bulk
			if err := e.rdb.ConfigResetStat(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			test(t, e)
			stats := e.rdb.Info(context.Background(), "commandstats").Val()
			if direct := strings.Contains(stats, "cmdstat_watch:"); direct != (bulk > 0) {
				t.Errorf("direct path (WATCH) taken: %v, want %v", direct, bulk > 0)
			}
		})
	}
}

func TestApplierFencing(t *testing.T) { bothPaths(t, testApplierFencing) }

func testApplierFencing(t *testing.T, e *fenceEnv) {
	ctx := context.Background()
	lease := e.ks.Leader("cdc")
	if err := e.rdb.Set(ctx, lease, "5 a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	term5 := Fence{Key: lease, Value: "5 a"}
	if err := e.run(Resume{Fence: term5}, e.stock(1, 1)); err != nil {
		t.Fatalf("batch of the lease holder: %v", err)
	}
	cp := e.stored()
	seq := e.rdb.Get(ctx, e.ks.Seq()).Val()

	for _, tc := range []struct {
		name  string
		lease string // "" deletes it (expired)
	}{
		{"taken over by a newer term", "6 b"},
		{"expired", ""},
		{"same holder, older token", "4 a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.lease == "" {
				e.rdb.Del(ctx, lease)
			} else {
				e.rdb.Set(ctx, lease, tc.lease, 0)
			}
			sub := e.rdb.Subscribe(ctx, e.ch)
			defer sub.Close()
			if _, err := sub.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			err := e.run(Resume{Expect: &cp, Fence: term5}, e.stock(2, 2))
			if !errors.Is(err, ErrFenced) {
				t.Fatalf("Run = %v, want ErrFenced", err)
			}
			if e.exists("m:2") || e.bulk > 0 && e.exists("m:2000") {
				t.Error("a fenced batch wrote its keys")
			}
			if got := e.stored(); got.Version != cp.Version {
				t.Errorf("a fenced batch moved the checkpoint to %s", got.Pos)
			}
			if got := e.rdb.Get(ctx, e.ks.Seq()).Val(); got != seq {
				t.Errorf("a fenced batch moved seq from %s to %s", seq, got)
			}
			if m, err := sub.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
				t.Errorf("a fenced batch published %v", m)
			}
		})
	}
}

func TestApplierCompareAndSetCheckpoint(t *testing.T) {
	bothPaths(t, testApplierCompareAndSetCheckpoint)
}

func testApplierCompareAndSetCheckpoint(t *testing.T, e *fenceEnv) {
	ctx := context.Background()
	if err := e.run(Resume{}, e.stock(1, 1), e.stock(2, 2)); err != nil {
		t.Fatal(err)
	}
	cp2 := e.stored() // at stock(2)
	if err := e.run(Resume{Expect: &cp2}, e.stock(3, 3)); err != nil {
		t.Fatalf("batch following the stored checkpoint: %v", err)
	}
	cp3 := e.stored()
	setVersion := func(t *testing.T, v uint64) {
		if err := e.rdb.HSet(ctx, e.ks.Checkpoint(), "version", strconv.FormatUint(v, 10)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		stored uint64
		want   error
	}{
		{"rewound: Redis holds an older checkpoint", cp2.Version, ErrRewind},
		{"moved on by another writer", cp3.Version + 100, ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setVersion(t, tc.stored)
			err := e.run(Resume{Expect: &cp3}, e.stock(4, 4))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
			if e.exists("m:4") || e.bulk > 0 && e.exists("m:4000") {
				t.Error("a refused batch wrote its keys")
			}
			if got := e.rdb.HGet(ctx, e.ks.Checkpoint(), "version").Val(); got != strconv.FormatUint(tc.stored, 10) {
				t.Errorf("a refused batch changed the checkpoint version to %s", got)
			}

			// The binlog idle: the check every second finds it too.
			in := make(chan *binlog.Txn)
			done := make(chan error, 1)
			go func() { done <- e.a.Run(context.Background(), in, Resume{Expect: &cp3}) }()
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("idle Run = %v, want %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				close(in)
				<-done
				t.Errorf("idle Run did not notice within 5s")
			}
		})
	}
}

// After a rewind the seq counter is older too; the writer's next message
// must not continue a sequence a subscriber has already seen.
func TestApplierSeqGapAfterRewind(t *testing.T) { bothPaths(t, testApplierSeqGapAfterRewind) }

func testApplierSeqGapAfterRewind(t *testing.T, e *fenceEnv) {
	ctx := context.Background()
	if err := e.run(Resume{}, e.stock(1, 1)); err != nil {
		t.Fatal(err)
	}
	cp1 := e.stored()
	if err := e.run(Resume{Expect: &cp1}, e.stock(2, 2), e.stock(3, 3)); err != nil {
		t.Fatal(err)
	}
	last, _ := e.rdb.Get(ctx, e.ks.Seq()).Int64()
	// Redis comes back from a file written after the first batch.
	e.rdb.HSet(ctx, e.ks.Checkpoint(), "file", cp1.Pos.File, "pos", cp1.Pos.Pos, "version", cp1.Version)
	e.rdb.Set(ctx, e.ks.Seq(), 1, 0)
	if err := e.run(Resume{Expect: &Checkpoint{Version: e.a.Applied().Version}}, e.stock(4, 4)); !errors.Is(err, ErrRewind) {
		t.Fatalf("Run = %v, want ErrRewind", err)
	}

	sub := e.rdb.Subscribe(ctx, e.ch)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	// Replay from the stored checkpoint.
	if err := e.run(Resume{Expect: &cp1}, e.stock(2, 2)); err != nil {
		t.Fatalf("replay: %v", err)
	}
	m, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var msg struct{ Seq int64 }
	if err := json.Unmarshal([]byte(m.Payload), &msg); err != nil {
		t.Fatal(err)
	}
	if msg.Seq <= last+1 {
		t.Errorf("first message after the rewind has seq %d; a subscriber that saw %d must see a gap (> %d)", msg.Seq, last, last+1)
	}
	if v := e.rdb.Get(ctx, "m:2").Val(); v != "2" {
		t.Errorf("replayed key m:2 = %q, want 2", v)
	}
}

// TestDirectWatch: on the direct path the checks are made before EXEC,
// so the checkpoint and the lease are WATCHed from the checks on. A
// writer whose lease is taken, or whose checkpoint moves, between its
// checks and its EXEC writes nothing: EXEC aborts, the next try reads the
// change and refuses.
func TestDirectWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		want error
		move func(e *fenceEnv, lease string)
	}{
		{"lease taken", ErrFenced, func(e *fenceEnv, lease string) {
			e.rdb.Set(context.Background(), lease, "6 b", 0)
		}},
		{"checkpoint moved", ErrConflict, func(e *fenceEnv, lease string) {
			e.rdb.HIncrBy(context.Background(), e.ks.Checkpoint(), "version", 100)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newFenceEnv(t)
			e.bulk = directMin
			lease := e.ks.Leader("cdc")
			if err := e.rdb.Set(ctx, lease, "5 a", 0).Err(); err != nil {
				t.Fatal(err)
			}
			term5 := Fence{Key: lease, Value: "5 a"}
			if err := e.run(Resume{Fence: term5}, e.stock(1, 1)); err != nil {
				t.Fatal(err)
			}
			cp := e.stored()
			moved := 0
			e.a.checked = func() {
				if moved++; moved == 1 {
					tc.move(e, lease)
				}
			}
			defer func() { e.a.checked = nil }()
			err := e.run(Resume{Expect: &cp, Fence: term5}, e.stock(2, 2))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
			if moved != 1 {
				t.Fatalf("the checks passed %d times, want once (the second try must refuse)", moved)
			}
			if e.exists("m:2") || e.exists("m:2000") {
				t.Error("a batch wrote its keys after its lease or checkpoint changed under WATCH")
			}
		})
	}
}
