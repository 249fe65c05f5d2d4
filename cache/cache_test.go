package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// The suite runs on one Redis, or with CACHESYNC_TEST_REDIS_MODE=cluster
// on a Redis Cluster (see testenv.ClusterMode).
var (
	redisAddr    string
	redisCluster *testenv.RedisCluster
)

// newClient connects to the suite's Redis as the daemon does.
func newClient(poolSize int) redis.UniversalClient {
	if redisCluster != nil {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: redisCluster.Addrs(), PoolSize: poolSize, ClusterStateReloadInterval: time.Second})
	}
	return redis.NewClient(&redis.Options{Addr: redisAddr, PoolSize: poolSize})
}

func TestMain(m *testing.M) {
	if testenv.ClusterMode() {
		c, err := testenv.NewRedisCluster()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		redisCluster = c
		code := m.Run()
		c.Close()
		os.Exit(code)
	}
	rd, err := testenv.NewRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	redisAddr = rd.Addr()
	code := m.Run()
	rd.Close()
	os.Exit(code)
}

// fixture is a read path plus a real sink applier fed synthetic binlog
// transactions, each test on its own key prefix and channel.
type fixture struct {
	t      *testing.T
	prefix string
	rdb    redis.UniversalClient
	c      *Cache
	a      *sink.Applier
	txns   chan *binlog.Txn
	pos    uint32
	table  *binlog.Table
}

var fixtures atomic.Int64

func newFixture(t *testing.T) *fixture {
	t.Helper()
	n := fixtures.Add(1)
	prefix := fmt.Sprintf("t%d:", n)
	rdb := newClient(32)
	t.Cleanup(func() { rdb.Close() })
	sc := sink.Config{KeyPrefix: prefix + "cs:", Channel: prefix + "inv",
		Rules: []sink.RuleConfig{{Table: "db.items", Kind: sink.KindInvalidate, Keys: []string{prefix + "item:{id}"}}}}
	if redisCluster != nil {
		sc.Cluster, sc.Source = true, "main"
	}
	sc.SetDefaults()
	a, err := sink.NewApplier(sc, rdb, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := Config{}
	cc.SetDefaults()
	c, err := New(cc, rdb, sc.Keyspace(), sc.Channel, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	f := &fixture{t: t, prefix: prefix, rdb: rdb, c: c, a: a, txns: make(chan *binlog.Txn, 16), pos: 4,
		table: binlog.NewTable("db", "items", []string{"id", "v"}, nil)}
	wg.Add(2)
	go func() { defer wg.Done(); _ = a.Run(ctx, f.txns, sink.Resume{}) }()
	go func() { defer wg.Done(); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	f.waitLive()
	return f
}

func (f *fixture) key(id int) string { return f.prefix + "item:" + strconv.Itoa(id) }

func (f *fixture) waitLive() {
	f.t.Helper()
	waitFor(f.t, "L1 live", f.c.Live)
}

// invalidate sends a transaction updating row id, like the binlog would.
func (f *fixture) invalidate(id int) {
	f.pos += 100
	f.txns <- &binlog.Txn{Pos: binlog.Position{File: "binlog.000001", Pos: f.pos}, Commit: time.Now(),
		Changes: []binlog.Change{{Table: f.table, Op: binlog.Update, Before: []any{int64(id), int64(0)}, After: []any{int64(id), int64(1)}}}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func constant(v string, loads *atomic.Int64) Loader {
	return func(context.Context) ([]byte, bool, error) {
		loads.Add(1)
		return []byte(v), true, nil
	}
}

func TestReadPathLevels(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	key := f.key(1)
	for i, want := range []Source{FromDB, FromL1, FromL1} {
		v, src, err := f.c.Get(ctx, key, constant("one", &loads))
		if err != nil || string(v) != "one" || src != want {
			t.Fatalf("read %d: got %q from %s (%v), want one from %s", i, v, src, err, want)
		}
	}
	if got := f.rdb.Get(ctx, key).Val(); got != "one" {
		t.Fatalf("redis holds %q after the fill, want one", got)
	}
	if ttl := f.rdb.PTTL(ctx, key).Val(); ttl < 50*time.Minute || ttl > 70*time.Minute {
		t.Fatalf("fill TTL %s, want 1h ± 10%%", ttl)
	}
	// A second process (fresh L1) reads from L2.
	cc := Config{}
	cc.SetDefaults()
	other, _ := New(cc, f.rdb, f.c.ks, f.c.channel, zerolog.Nop(), nil)
	if _, src, _ := other.Get(ctx, key, constant("other", &loads)); src != FromL2 {
		t.Fatalf("fresh process read from %s, want L2", src)
	}
	// An invalidation drops the key from L1 and Redis: the next read loads.
	f.invalidate(1)
	waitFor(t, "L1 drop", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
	if n := f.rdb.Exists(ctx, key).Val(); n != 0 {
		t.Fatal("redis key survived the invalidation")
	}
	if _, src, _ := f.c.Get(ctx, key, constant("two", &loads)); src != FromDB {
		t.Fatalf("after invalidation read from %s, want DB", src)
	}
	if loads.Load() != 2 {
		t.Fatalf("%d loads, want 2", loads.Load())
	}
}

func TestNotFoundIsCachedBriefly(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	missing := func(context.Context) ([]byte, bool, error) { loads.Add(1); return nil, false, nil }
	key := f.key(404)
	for i := 0; i < 3; i++ {
		if _, _, err := f.c.Get(ctx, key, missing); err != ErrNotFound {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	}
	if loads.Load() != 1 {
		t.Fatalf("%d loads for a missing row, want 1 (not-found cached)", loads.Load())
	}
	if ttl := f.rdb.PTTL(ctx, key).Val(); ttl <= 0 || ttl > 5*time.Second {
		t.Fatalf("not-found TTL %s, want (0, 5s]", ttl)
	}
}

func TestSingleflight(t *testing.T) {
	f := newFixture(t)
	var loads atomic.Int64
	slow := func(context.Context) ([]byte, bool, error) {
		loads.Add(1)
		time.Sleep(50 * time.Millisecond)
		return []byte("v"), true, nil
	}
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, _, err := f.c.Get(context.Background(), f.key(7), slow); err != nil || string(v) != "v" {
				t.Errorf("got %q, %v", v, err)
			}
		}()
	}
	wg.Wait()
	if loads.Load() != 1 {
		t.Fatalf("%d loads for 64 concurrent misses, want 1", loads.Load())
	}
}

// A caller that gives up must not fail the others waiting for the same
// load: the caller whose Get started the shared load is canceled mid-load;
// it returns at once with its own error, the 63 others get the value, and
// the key is filled once.
func TestCanceledCallerDoesNotFailSharedLoad(t *testing.T) {
	f := newFixture(t)
	var loads atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	slow := func(ctx context.Context) ([]byte, bool, error) {
		loads.Add(1)
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		return []byte("v"), true, nil
	}
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, _, err := f.c.Get(leaderCtx, f.key(9), slow)
		leaderErr <- err
	}()
	<-started
	var wg sync.WaitGroup
	for i := 0; i < 63; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, _, err := f.c.Get(context.Background(), f.key(9), slow); err != nil || string(v) != "v" {
				t.Errorf("waiting caller got %q, %v; want \"v\"", v, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // the others join the load
	cancelLeader()
	select {
	case err := <-leaderErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("canceled caller got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the canceled caller did not return while the load was still running")
	}
	close(release)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads, want 1", n)
	}
	if v, err := f.rdb.Get(context.Background(), f.key(9)).Result(); err != nil || v == "" {
		t.Errorf("key not filled after the shared load: %q, %v", v, err)
	}
}

// A loader that panics gives its callers an error; the process lives on
// and the next Get of the key loads again.
func TestLoaderPanicIsAnError(t *testing.T) {
	f := newFixture(t)
	_, _, err := f.c.Get(context.Background(), f.key(11), func(context.Context) ([]byte, bool, error) { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Get with a panicking loader: %v, want an error naming the panic", err)
	}
	var loads atomic.Int64
	if v, _, err := f.c.Get(context.Background(), f.key(11), constant("v", &loads)); err != nil || string(v) != "v" || loads.Load() != 1 {
		t.Fatalf("Get after the panic: %q, %v, %d loads", v, err, loads.Load())
	}
}

// The seed's race, at L2: the loader read the old row, then the change is
// applied (deleting the lease) before the fill: the fill must be refused.
func TestFillRefusedAfterInvalidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	key := f.key(3)
	before := testutil.ToFloat64(f.c.m.refused)
	v, src, err := f.c.Get(ctx, key, func(context.Context) ([]byte, bool, error) {
		old := []byte("old") // read from the database…
		f.invalidate(3)      // …then the writer commits and CDC applies
		waitFor(t, "lease deleted", func() bool { return f.rdb.Exists(ctx, f.c.ks.Lease(key)).Val() == 0 })
		return old, true, nil
	})
	if err != nil || string(v) != "old" || src != FromDB {
		t.Fatalf("got %q from %s (%v)", v, src, err)
	}
	if n := f.rdb.Exists(ctx, key).Val(); n != 0 {
		t.Fatalf("stale fill landed in redis: %q", f.rdb.Get(ctx, key).Val())
	}
	if _, _, ok := f.c.PeekL1(key); ok {
		t.Fatal("stale load kept in L1")
	}
	if got := testutil.ToFloat64(f.c.m.refused) - before; got != 1 {
		t.Fatalf("fills_refused_total grew by %v, want 1", got)
	}
}

// An L2 hit read just before the invalidation arrives must not land in L1.
func TestL1NeverKeepsLoadOverlappingInvalidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	// Many rounds of: reader fetches while an invalidation races it.
	const rounds = 300
	for i := 0; i < rounds; i++ {
		key := f.key(i)
		if err := f.rdb.Set(ctx, key, "old", 0).Err(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _, _, _ = f.c.Get(ctx, key, constant("new", &loads)) }()
		go func() { defer wg.Done(); f.invalidate(i) }()
		wg.Wait()
		// Once the invalidation is processed, L1 must not hold "old".
		waitFor(t, "invalidation applied", func() bool { return f.rdb.Exists(ctx, key).Val() == 0 || f.rdb.Get(ctx, key).Val() == "new" })
		// Its message is the (i+1)th: on a cluster it follows the delete.
		waitFor(t, "message seen", func() bool { return f.c.lastSeq.Load() >= int64(i+1) })
		if v, _, ok := f.c.PeekL1(key); ok && string(v) == "old" {
			t.Fatalf("round %d: L1 kept a value read before the invalidation", i)
		}
	}
}

func TestGapFlushesL1(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	key := f.key(1)
	_, _, _ = f.c.Get(ctx, key, constant("v", &loads))
	if _, _, ok := f.c.PeekL1(key); !ok {
		t.Fatal("not in L1")
	}
	f.invalidate(99) // seq 1: unrelated key, no flush
	waitFor(t, "seq 1", func() bool { return f.c.lastSeq.Load() == 1 })
	if _, _, ok := f.c.PeekL1(key); !ok {
		t.Fatal("unrelated invalidation dropped the key")
	}
	// A message was lost: seq jumps from 1 to 3.
	f.rdb.Publish(ctx, f.c.channel, `{"seq":3,"keys":["unrelated"]}`)
	waitFor(t, "gap flush", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
	if got := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("sequence gap")); got != 1 {
		t.Fatalf("gap flushes %v, want 1", got)
	}
}

// A key that is not UTF-8 (named by a binary column) arrives in the
// message's keys_b64 and drops exactly that key from L1, not a look-alike
// with U+FFFD in place of its bytes; undecodable base64 flushes L1.
func TestBinaryKeyInvalidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	key := f.prefix + "item:\x00\xff\xfe"
	lookalike := f.prefix + "item:\x00\ufffd\ufffd"
	for _, k := range []string{key, lookalike} {
		_, _, _ = f.c.Get(ctx, k, constant("v", &loads))
		if _, _, ok := f.c.PeekL1(k); !ok {
			t.Fatalf("%q not in L1", k)
		}
	}
	f.pos += 100
	f.txns <- &binlog.Txn{Pos: binlog.Position{File: "binlog.000001", Pos: f.pos}, Commit: time.Now(),
		Changes: []binlog.Change{{Table: f.table, Op: binlog.Insert, After: []any{[]byte("\x00\xff\xfe"), int64(1)}}}}
	waitFor(t, "L1 drop", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
	if _, _, ok := f.c.PeekL1(lookalike); !ok {
		t.Error("the invalidation of a binary key dropped a look-alike key")
	}
	if got := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("bad message")); got != 0 {
		t.Fatalf("bad-message flushes %v, want 0", got)
	}
	f.rdb.Publish(ctx, f.c.channel, fmt.Sprintf(`{"seq":%d,"keys":[],"keys_b64":["not base64!"]}`, f.c.lastSeq.Load()+1))
	waitFor(t, "bad message flush", func() bool { _, _, ok := f.c.PeekL1(lookalike); return !ok })
	if got := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("bad message")); got != 1 {
		t.Fatalf("bad-message flushes %v, want 1", got)
	}
}

func TestPubSubDisconnectFlushesL1(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	key := f.key(1)
	_, _, _ = f.c.Get(ctx, key, constant("v", &loads))
	if _, _, ok := f.c.PeekL1(key); !ok {
		t.Fatal("not in L1")
	}
	subscribed := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("subscribed"))
	kill := func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	}
	var err error
	if cc, ok := f.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { _ = kill(ctx, c); return nil })
	} else {
		err = kill(ctx, f.rdb.(*redis.Client))
	}
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flush", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
	waitFor(t, "resubscribed", func() bool {
		return f.c.Live() && testutil.ToFloat64(f.c.m.flushes.WithLabelValues("subscribed")) > subscribed
	})
	// Invalidations work again after the reconnect.
	_, _, _ = f.c.Get(ctx, key, constant("v2", &loads))
	f.invalidate(1)
	waitFor(t, "drop after reconnect", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
}

// A subscription that stops receiving what the writer publishes (after a
// Sentinel failover it stays on the old master) must notice from the seq
// counter, flush L1 and subscribe again.
func TestMissedMessagesResubscribe(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var loads atomic.Int64
	key := f.key(1)
	f.invalidate(99)
	waitFor(t, "seq 1", func() bool { return f.c.lastSeq.Load() == 1 })
	_, _, _ = f.c.Get(ctx, key, constant("v", &loads))
	if _, _, ok := f.c.PeekL1(key); !ok {
		t.Fatal("not in L1")
	}
	subscribed := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("subscribed"))
	// Published where this subscriber does not listen.
	if err := f.rdb.Incr(ctx, f.c.ks.Seq()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flush for missing messages", func() bool {
		return testutil.ToFloat64(f.c.m.flushes.WithLabelValues("messages missing")) == 1
	})
	if _, _, ok := f.c.PeekL1(key); ok {
		t.Error("L1 kept a key after messages went missing")
	}
	waitFor(t, "resubscribed", func() bool {
		return f.c.Live() && testutil.ToFloat64(f.c.m.flushes.WithLabelValues("subscribed")) > subscribed
	})
	// Nothing is owed after the new subscription: no further flushes.
	time.Sleep(3 * seqCheckEvery)
	if got := testutil.ToFloat64(f.c.m.flushes.WithLabelValues("messages missing")); got != 1 {
		t.Errorf("%v flushes for missing messages, want 1", got)
	}
	_, _, _ = f.c.Get(ctx, key, constant("v2", &loads))
	f.invalidate(1)
	waitFor(t, "drop after resubscribing", func() bool { _, _, ok := f.c.PeekL1(key); return !ok })
}

// Many goroutines read hot keys while others invalidate them: once all is
// quiet and the last invalidation was seen, no L1 entry may differ from the
// loader's current value.
func TestConcurrentReadsAndInvalidations(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	const keys = 20
	var truth [keys]atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 32; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := r; ctx.Err() == nil; i++ {
				id := i % keys
				_, _, _ = f.c.Get(ctx, f.key(id), func(context.Context) ([]byte, bool, error) {
					v := truth[id].Load()
					time.Sleep(time.Duration(i%3) * time.Millisecond) // widen the race
					return []byte(strconv.FormatInt(v, 10)), true, nil
				})
			}
		}(r)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			id := i % keys
			truth[id].Add(1) // the "commit"…
			f.invalidate(id) // …then CDC
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	// Every invalidation applied (sent is not applied: the applier may
	// still be filling a batch), then its message seen.
	t.Logf("%d invalidations", f.pos/100)
	waitFor(t, "last invalidation applied", func() bool { cp := f.a.Applied(); return cp != nil && cp.Pos.Pos == f.pos })
	seq := func() string { return f.rdb.Get(context.Background(), f.c.ks.Seq()).Val() }
	waitFor(t, "last message", func() bool { return seq() != "" && strconv.FormatInt(f.c.lastSeq.Load(), 10) == seq() })
	for id := 0; id < keys; id++ {
		want := strconv.FormatInt(truth[id].Load(), 10)
		if v, _, ok := f.c.PeekL1(f.key(id)); ok && string(v) != want {
			t.Errorf("key %d: L1 holds %s, truth is %s", id, v, want)
		}
		if v, err := f.rdb.Get(context.Background(), f.key(id)).Result(); err == nil && v != want {
			t.Errorf("key %d: redis holds %s, truth is %s", id, v, want)
		}
	}
}
