package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// clusterRules write keys in every slot: a JSON rewrite, a versioned
// mirror, an invalidation and a set per status.
func clusterRules(p string) []RuleConfig {
	return []RuleConfig{
		{Table: "shop.goods", Kind: KindRewrite, Key: p + "g:{id}", Columns: []string{"id", "stock"}},
		{Table: "shop.goods", Kind: KindMirror, Key: p + "s:{id}", Column: "stock", Versioned: true},
		{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{p + "inv:{id}"}},
		{Table: "shop.goods", Kind: KindMember, Key: p + "st:{status}", Member: "{id}"},
	}
}

func newClusterApplier(t *testing.T, rdb *redis.ClusterClient, p string) *Applier {
	t.Helper()
	cfg := Config{KeyPrefix: p + "cs:", Channel: p + "inv", Source: "src", Cluster: true, Rules: clusterRules(p)}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := NewApplier(cfg, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a.newBackOff = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
	return a
}

// goodsModel is what the rows are after the transactions made so far.
type goodsModel struct {
	rows map[int32][]any
	rng  *rand.Rand
}

// next makes a transaction of 1..8 random changes at p.
func (m *goodsModel) next(p binlog.Position) *binlog.Txn {
	var chs []binlog.Change
	for range 1 + m.rng.IntN(8) {
		id := int32(1 + m.rng.IntN(400))
		row := []any{id, "n", int32(m.rng.IntN(1000)), []string{"on", "off", "gone"}[m.rng.IntN(3)]}
		old, ok := m.rows[id]
		switch {
		case ok && m.rng.IntN(5) == 0:
			chs = append(chs, del(old...))
			delete(m.rows, id)
		case ok:
			chs = append(chs, upd(old, row))
			m.rows[id] = row
		default:
			chs = append(chs, ins(row...))
			m.rows[id] = row
		}
	}
	return txn(p, chs...)
}

// check compares every key the rules write with the model.
func (m *goodsModel) check(t *testing.T, rdb *redis.ClusterClient, p string) {
	t.Helper()
	ctx := context.Background()
	members := map[string]map[string]bool{}
	for id := int32(1); id <= 400; id++ {
		row, ok := m.rows[id]
		g, errG := rdb.Get(ctx, p+"g:"+strconv.Itoa(int(id))).Result()
		s, errS := rdb.Get(ctx, p+"s:"+strconv.Itoa(int(id))).Result()
		if n, err := rdb.Exists(ctx, p+"inv:"+strconv.Itoa(int(id))).Result(); err != nil || n != 0 {
			t.Errorf("inv:%d exists (%v)", id, err)
		}
		if !ok {
			if !errors.Is(errG, redis.Nil) || !errors.Is(errS, redis.Nil) {
				t.Errorf("row %d deleted, keys hold %q (%v), %q (%v)", id, g, errG, s, errS)
			}
			continue
		}
		want, _ := json.Marshal(map[string]any{"id": row[0], "stock": row[2]})
		if g != string(want) || s != fmt.Sprint(row[2]) {
			t.Errorf("row %d: g = %q (%v), s = %q (%v); want %s and %v", id, g, errG, s, errS, want, row[2])
		}
		st := row[3].(string)
		if members[st] == nil {
			members[st] = map[string]bool{}
		}
		members[st][strconv.Itoa(int(id))] = true
	}
	for _, st := range []string{"on", "off", "gone"} {
		got, err := rdb.SMembers(ctx, p+"st:"+st).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(members[st]) {
			t.Errorf("st:%s has %d members, want %d", st, len(got), len(members[st]))
		}
		for _, id := range got {
			if !members[st][id] {
				t.Errorf("st:%s holds %s", st, id)
			}
		}
	}
}

// TestClusterApply: batches of rows in every slot are applied per slot on a
// 3-master Redis Cluster; a crash between a batch's slot groups and its
// checkpoint (injected) leaves slots ahead of the checkpoint, and the
// replay from the checkpoint, batched differently, skips what they hold
// and ends with every key as the rows are. The per-slot records name the
// writer's fencing token, and an older token is refused.
func TestClusterApply(t *testing.T) {
	c := testenv.StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	defer rdb.Close()
	ctx := context.Background()
	const p = "ca:"
	m := &goodsModel{rows: map[int32][]any{}, rng: rand.New(rand.NewPCG(1, 2))}
	var txns []*binlog.Txn
	for i := range 300 {
		txns = append(txns, m.next(pos("binlog.000001", uint32(1000+100*i))))
	}

	// First writer: crashes after the slot groups of its 5th batch with a
	// position, with several transactions queued per batch.
	a := newClusterApplier(t, rdb, p)
	rctx, cancel := context.WithCancel(ctx)
	batches := 0
	var crashedAt *binlog.Txn
	a.cs.between = func(b *batch) error {
		if batches++; batches == 5 {
			crashedAt = b.cp
			cancel()
			return errors.New("crash")
		}
		return nil
	}
	a.cfg.BatchChanges = 40
	in := make(chan *binlog.Txn, len(txns))
	for _, tx := range txns[:150] {
		in <- tx
	}
	close(in)
	f := Fence{Key: a.ks.Leader("cdc"), Value: "100 first"}
	if err := rdb.Set(ctx, f.Key, f.Value, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Run(rctx, in, Resume{Fence: f}); err != nil {
		t.Fatalf("first run: %v", err)
	}
	if crashedAt == nil {
		t.Fatal("the crash hook never ran")
	}
	cp, ok, err := a.ReadCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("checkpoint: %v %v", ok, err)
	}
	v, _ := crashedAt.Pos.Version()
	if cp.Version >= v {
		t.Fatalf("checkpoint %s is not before the crashed batch's %s", cp.Pos, crashedAt.Pos)
	}
	ahead := 0
	for slot := range keyspace.Slots {
		if ver, err := rdb.HGet(ctx, a.ks.SlotRecord(slot), "ver").Uint64(); err == nil && ver == v {
			ahead++
		}
	}
	if ahead == 0 {
		t.Fatal("no slot records the crashed batch")
	}
	t.Logf("crashed after the slot groups of the batch ending at %s: %d slots ahead of the checkpoint %s", crashedAt.Pos, ahead, cp.Pos)

	// What the keys hold now: the slots ahead hold the crashed batch.
	crashed := map[string]string{} // of the keys in slots ahead
	for id := 1; id <= 400; id++ {
		k := p + "g:" + strconv.Itoa(id)
		if ver, _ := rdb.HGet(ctx, a.ks.SlotRecord(keyspace.Slot(k)), "ver").Uint64(); ver == v {
			crashed[k], _ = rdb.Get(ctx, k).Result()
		}
	}

	// The next writer (a newer token) replays from the checkpoint, one
	// transaction per batch. Up to just before the crashed batch's end,
	// the slots ahead skip every batch: none goes back to an older state.
	f.Value = "200 second"
	if err := rdb.Set(ctx, f.Key, f.Value, 0).Err(); err != nil {
		t.Fatal(err)
	}
	replay := func(from *Checkpoint, upTo uint64) {
		t.Helper()
		b := newClusterApplier(t, rdb, p)
		b.cfg.BatchChanges = 1
		in := make(chan *binlog.Txn, len(txns))
		for _, tx := range txns {
			if ver, _ := tx.Pos.Version(); ver > from.Version && ver <= upTo {
				in <- tx
			}
		}
		close(in)
		if err := b.Run(ctx, in, Resume{Expect: from, Fence: f}); err != nil {
			t.Fatalf("replay: %v", err)
		}
	}
	replay(&cp, v-1)
	older := rowsAt(txns, v-1)
	kept, wouldRegress := 0, 0
	for id := int32(1); id <= 400; id++ {
		k := p + "g:" + strconv.Itoa(int(id))
		if _, ok := crashed[k]; !ok {
			continue
		}
		got, _ := rdb.Get(ctx, k).Result()
		if got != crashed[k] {
			t.Errorf("%s went back from %q to %q", k, crashed[k], got)
		}
		kept++
		if want := jsonOf(older[id]); want != crashed[k] {
			wouldRegress++
		}
	}
	if wouldRegress == 0 {
		t.Fatalf("of the %d keys in slots ahead, none changed between the checkpoint and the crash: the test proves nothing", kept)
	}
	t.Logf("%d keys in slots ahead kept the crashed batch's state; %d of them would have gone back", kept, wouldRegress)
	mid, _, err := a.ReadCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replay(&mid, ^uint64(0))
	m.check(t, rdb, p)
	if a.cs.byNode == 0 {
		t.Errorf("no batch went by node (%d by slot)", a.cs.bySlot)
	}

	// The first writer's token is refused by every slot the second wrote,
	// even with the lease (as if its renewal raced the takeover).
	if err := rdb.Set(ctx, f.Key, "100 first", 0).Err(); err != nil {
		t.Fatal(err)
	}
	a2 := newClusterApplier(t, rdb, p)
	last, _, _ := a2.ReadCheckpoint(ctx)
	in3 := make(chan *binlog.Txn, 1)
	in3 <- m.next(pos("binlog.000002", 4))
	close(in3)
	err = a2.Run(ctx, in3, Resume{Expect: &last, Fence: Fence{Key: f.Key, Value: "100 first"}})
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("a writer with an older token: %v, want ErrFenced", err)
	}
}

// rowsAt folds the transactions up to version upTo into the rows they
// leave.
func rowsAt(txns []*binlog.Txn, upTo uint64) map[int32][]any {
	rows := map[int32][]any{}
	for _, tx := range txns {
		if ver, _ := tx.Pos.Version(); ver > upTo {
			break
		}
		for _, ch := range tx.Changes {
			if ch.After == nil {
				delete(rows, ch.Before[0].(int32))
			} else {
				rows[ch.After[0].(int32)] = ch.After
			}
		}
	}
	return rows
}

// jsonOf is the rewrite rule's value for row ("" for none).
func jsonOf(row []any) string {
	if row == nil {
		return ""
	}
	b, _ := json.Marshal(map[string]any{"id": row[0], "stock": row[2]})
	return string(b)
}

// TestClusterRewind: a master dies with writes its replica never got (the
// replica was stopped meanwhile) and the replica takes over. The applier
// notices that the slots of that shard went back (their master changed),
// moves the checkpoint back to the oldest of their records and stops with
// ErrRewind; the replay from there brings every key back to the rows.
func TestClusterRewind(t *testing.T) {
	c := testenv.StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	defer rdb.Close()
	ctx := context.Background()
	const p = "rw:"
	m := &goodsModel{rows: map[int32][]any{}, rng: rand.New(rand.NewPCG(3, 4))}
	var txns []*binlog.Txn
	for i := range 120 {
		txns = append(txns, m.next(pos("binlog.000001", uint32(1000+100*i))))
	}
	a := newClusterApplier(t, rdb, p)
	in := make(chan *binlog.Txn, len(txns))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, in, Resume{}) }()
	applied := func(tx *binlog.Txn) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for cp := a.Applied(); cp == nil || cp.Pos != tx.Pos; cp = a.Applied() {
			if time.Now().After(deadline) {
				t.Fatalf("%s not applied within 10s", tx.Pos)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, tx := range txns[:60] {
		in <- tx
	}
	applied(txns[59])
	time.Sleep(2500 * time.Millisecond) // replicas in sync; watchSlots knows the run ids

	master, replica, err := c.Shard(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(replica.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(replica.PID(), syscall.SIGCONT)
		}
	}()
	// The replica would read what its socket buffers hold when it runs
	// again: a large value first keeps the writes after it in the
	// master's memory, which dies with it.
	junk := ""
	for i := 0; junk == ""; i++ {
		k := "junk" + strconv.Itoa(i)
		if mc, err := rdb.MasterForKey(ctx, k); err == nil && mc.Options().Addr == master.Addr() {
			junk = k
		}
	}
	if err := rdb.Set(ctx, junk, strings.Repeat("x", 48<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tx := range txns[60:90] {
		in <- tx
	}
	applied(txns[89])
	if err := master.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(replica.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(hctx); err != nil {
		t.Fatal(err)
	}
	lost := 0 // keys that the failover took back
	rows := rowsAt(txns[:90], ^uint64(0))
	for id := int32(1); id <= 400; id++ {
		if got, _ := rdb.Get(ctx, p+"g:"+strconv.Itoa(int(id))).Result(); got != jsonOf(rows[id]) {
			lost++
		}
	}
	if lost == 0 {
		t.Fatal("the failover lost no write: the test proves nothing")
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrRewind) && !errors.Is(err, ErrRedisReset) {
			t.Fatalf("Run after the failover: %v, want ErrRewind", err)
		}
		t.Logf("%d keys went back with the failover; Run: %v", lost, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%d keys went back with the failover, and Run did not notice within 30s", lost)
	}
	cp, ok, err := a.ReadCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("checkpoint: %v %v", ok, err)
	}
	if v, _ := txns[89].Pos.Version(); cp.Version >= v {
		t.Fatalf("checkpoint %s not moved back", cp.Pos)
	}
	b := newClusterApplier(t, rdb, p)
	in2 := make(chan *binlog.Txn, len(txns))
	for _, tx := range txns {
		if v, _ := tx.Pos.Version(); v > cp.Version {
			in2 <- tx
		}
	}
	close(in2)
	if err := b.Run(ctx, in2, Resume{Expect: &cp}); err != nil {
		t.Fatalf("replay from %s: %v", cp.Pos, err)
	}
	m.check(t, rdb, p)
}

// TestClusterReshard: slots move between masters (redis-cli --cluster
// reshard) while batches stream: nothing is lost and every key ends as the
// rows are.
func TestClusterReshard(t *testing.T) {
	c := testenv.StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	defer rdb.Close()
	ctx := context.Background()
	const p = "rs:"
	m := &goodsModel{rows: map[int32][]any{}, rng: rand.New(rand.NewPCG(5, 6))}
	var txns []*binlog.Txn
	for i := range 3000 {
		txns = append(txns, m.next(pos("binlog.000001", uint32(1000+100*i))))
	}
	a := newClusterApplier(t, rdb, p)
	a.cfg.BatchChanges = 20
	in := make(chan *binlog.Txn)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, in, Resume{}) }()
	fed := make(chan struct{})
	go func() { // a steady stream while the slots move
		defer close(fed)
		for _, tx := range txns {
			in <- tx
			time.Sleep(2 * time.Millisecond)
		}
		close(in)
	}()
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := func(r *testenv.Redis) string {
		n := redis.NewClient(&redis.Options{Addr: r.Addr()})
		defer n.Close()
		s, err := n.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	time.Sleep(500 * time.Millisecond)
	moves := 0
	for i := range 2 {
		from, to := masters[i], masters[(i+1)%len(masters)]
		// redis-cli refuses to reshard ("Nodes don't agree about
		// configuration") until every node has heard of the last move
		// over the cluster bus, which can take a moment on a loaded box.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.WaitHealthy(wctx)
		cancel()
		if err != nil {
			t.Fatalf("before reshard %d: %v", i, err)
		}
		out, err := exec.Command("redis-cli", "--cluster", "reshard", from.Addr(), "--cluster-from", id(from), "--cluster-to", id(to),
			"--cluster-slots", "1500", "--cluster-yes", "--cluster-pipeline", "50").CombinedOutput()
		if err != nil {
			t.Fatalf("reshard %d: %v\n%s", i, err, out)
		}
		moves++
	}
	select {
	case <-fed:
		t.Fatal("the stream ended before the slots finished moving: make it longer")
	default:
	}
	select {
	case <-fed:
	case <-time.After(2 * time.Minute):
		t.Fatal("the stream did not finish within 2 minutes")
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if cp := a.Applied(); cp == nil || cp.Pos != txns[len(txns)-1].Pos {
		t.Fatalf("applied up to %v, want %s", cp, txns[len(txns)-1].Pos)
	}
	m.check(t, rdb, p)
	t.Logf("%d transactions streamed while %d reshards moved 1500 slots each; batches by node %d, by slot %d", len(txns), moves, a.cs.byNode, a.cs.bySlot)
}

// TestClusterShardLostWhileStopped: a master restarts empty while no
// writer runs (its replica did not take over). The next writer finds the
// records of slots the source wrote gone (the bitmap of written slots
// names them) and rebuilds (ErrRedisReset) instead of streaming on.
func TestClusterShardLostWhileStopped(t *testing.T) {
	c := testenv.StartRedisCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	defer rdb.Close()
	ctx := context.Background()
	const p = "sl:"
	m := &goodsModel{rows: map[int32][]any{}, rng: rand.New(rand.NewPCG(7, 8))}
	a := newClusterApplier(t, rdb, p)
	in := make(chan *binlog.Txn, 20)
	for i := range 20 {
		in <- m.next(pos("binlog.000001", uint32(1000+100*i)))
	}
	close(in)
	if err := a.Run(ctx, in, Resume{}); err != nil {
		t.Fatal(err)
	}
	cp, _, err := a.ReadCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// FLUSHALL on a master that does not hold the checkpoint's slot: as a
	// restart without persistence, its replica following it.
	ctl, err := rdb.MasterForKey(ctx, a.ks.Checkpoint())
	if err != nil {
		t.Fatal(err)
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	flushed := ""
	for _, m := range masters {
		if m.Addr() != ctl.Options().Addr {
			flushed = m.Addr()
			break
		}
	}
	n := redis.NewClient(&redis.Options{Addr: flushed})
	defer n.Close()
	if err := n.FlushAll(ctx).Err(); err != nil {
		t.Fatalf("flush %s: %v", flushed, err)
	}
	b := newClusterApplier(t, rdb, p)
	in2 := make(chan *binlog.Txn)
	close(in2)
	if err := b.Run(ctx, in2, Resume{Expect: &cp}); !errors.Is(err, ErrRedisReset) {
		t.Fatalf("Run after %s lost its data: %v, want ErrRedisReset", flushed, err)
	}
}

// BenchmarkClusterApply applies transactions of 10 single-row changes on
// random keys (rewrite json), batched as the daemon batches them, on a
// 3-master Redis Cluster; BenchmarkStandaloneApply the same on one Redis.
// Reported per row.
func BenchmarkClusterApply(b *testing.B) {
	c := testenv.StartRedisCluster(b)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
	defer rdb.Close()
	cfg := Config{KeyPrefix: "bc:cs:", Source: "src", Cluster: true, Rules: []RuleConfig{{Table: "shop.goods", Kind: KindRewrite, Key: "bc:g:{id}", Columns: []string{"id", "stock"}}}}
	benchApply(b, rdb, cfg)
}

func BenchmarkStandaloneApply(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.StartRedis(b).Addr()})
	defer rdb.Close()
	cfg := Config{KeyPrefix: "bs:cs:", Rules: []RuleConfig{{Table: "shop.goods", Kind: KindRewrite, Key: "bs:g:{id}", Columns: []string{"id", "stock"}}}}
	benchApply(b, rdb, cfg)
}

func benchApply(b *testing.B, rdb redis.UniversalClient, cfg Config) {
	cfg.SetDefaults()
	a, err := NewApplier(cfg, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	txns := make([]*binlog.Txn, 0, b.N/10+1)
	for i := range b.N/10 + 1 {
		var chs []binlog.Change
		for range 10 {
			id := int32(rng.IntN(10_000))
			chs = append(chs, upd([]any{id, "n", int32(0), "on"}, []any{id, "n", int32(i), "on"}))
		}
		txns = append(txns, txn(pos("binlog.000001", uint32(1000+10*i)), chs...))
	}
	in := make(chan *binlog.Txn, len(txns))
	for _, t := range txns {
		in <- t
	}
	close(in)
	b.ResetTimer()
	if err := a.Run(context.Background(), in, Resume{}); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if cp := a.Applied(); cp == nil || cp.Pos != txns[len(txns)-1].Pos {
		b.Fatalf("applied up to %v", cp)
	}
}
