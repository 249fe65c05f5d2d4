package testenv

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSentinel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	s := StartSentinel(t)
	t.Logf("Sentinel topology ready in %v: nodes %s, %s; sentinels %v", time.Since(start).Round(time.Millisecond),
		s.Nodes()[0].Addr(), s.Nodes()[1].Addr(), s.SentinelAddrs())

	n0, n1 := s.Nodes()[0], s.Nodes()[1]
	if s.MasterName() != "cachesync" {
		t.Errorf("MasterName = %q", s.MasterName())
	}
	if addrs := s.SentinelAddrs(); len(addrs) != 3 || slices.Contains(addrs, n0.Addr()) || slices.Contains(addrs, n1.Addr()) {
		t.Errorf("SentinelAddrs = %v, want 3 addresses of their own", addrs)
	}
	checkRoles(ctx, t, s, n0, n1)
	if got := redisDo(t, n0.Addr(), "CONFIG", "GET", "repl-diskless-sync-delay"); got != "repl-diskless-sync-delay,0" {
		t.Errorf("NewRedisWith arguments not applied: CONFIG GET repl-diskless-sync-delay = %q", got)
	}

	// A client of the Sentinels writes to the master; the replica has it.
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName(), SentinelAddrs: s.SentinelAddrs()})
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "v1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	waitValue(ctx, t, n1.Addr(), "k", "v1")

	// FailoverPaused loses no write a client got an answer for, while a
	// client writes as fast as it can.
	w := startCounter(rdb)
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	if err := s.FailoverPaused(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("FailoverPaused to %s in %v", n1.Addr(), time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	acked, failed := w.stop()
	if acked < 100 {
		t.Errorf("only %d INCRs answered around the failover", acked)
	}
	got, err := nodeDo(ctx, nil, n1.Addr(), "GET", "n").Int64()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FailoverPaused: %d INCRs answered, %d failed; counter on the new master %d", acked, failed, got)
	if got < acked || got > acked+failed {
		t.Errorf("counter on the new master = %d after %d answered INCRs and %d failed ones: answered writes were lost", got, acked, failed)
	}
	// The old master is a replica already; the Sentinels see it soon.
	start = time.Now()
	if err := s.WaitSettled(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("settled %v after FailoverPaused", time.Since(start).Round(time.Millisecond))
	checkRoles(ctx, t, s, n1, n0)
	waitValue(ctx, t, n0.Addr(), "k", "v1")

	// A crash of the master: the Sentinels fail over on their own within
	// seconds (down-after-milliseconds 1000).
	start = time.Now()
	if err := n1.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		if addr, err := s.MasterAddr(ctx); err != nil || addr != n0.Addr() {
			return fmt.Errorf("MasterAddr = %q, %v", addr, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("no failover after the master was killed: %v", err)
	}
	t.Logf("automatic failover to %s %v after a kill of the master", n0.Addr(), time.Since(start).Round(time.Millisecond))
	// The killed node comes back empty with its own arguments (--replicaof
	// the first node, the master now) and resynchronizes.
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := s.WaitSettled(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted node %s a replica again in %v", n1.Addr(), time.Since(start).Round(time.Millisecond))
	// On a loaded machine the Sentinels may fail over once more while the
	// restarted node resynchronizes (down-after-milliseconds is 1 s, and a
	// busy master misses it): the topology is then settled the other way.
	// What follows needs a settled topology, not which way.
	master, replica := n0, n1
	if addr, err := s.MasterAddr(ctx); err == nil && addr == n1.Addr() {
		t.Logf("the Sentinels failed over again, to %s, while it resynchronized", n1.Addr())
		master, replica = n1, n0
	}
	checkRoles(ctx, t, s, master, replica)
	waitValue(ctx, t, replica.Addr(), "k", "v1")

	// Failover: when it returns, the Sentinels and the new master agree.
	// Sentinel lets the old master take writes until the client switches:
	// how many answered INCRs that loses is logged, not checked (it is
	// Redis's behaviour, not this package's).
	before, err := nodeDo(ctx, nil, master.Addr(), "GET", "n").Int64()
	if err != nil {
		t.Fatal(err)
	}
	w = startCounter(rdb)
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Failover to %s in %v", replica.Addr(), time.Since(start).Round(time.Millisecond))
	if addr, err := s.MasterAddr(ctx); err != nil || addr != replica.Addr() {
		t.Fatalf("after Failover: MasterAddr = %q, %v; want %s", addr, err, replica.Addr())
	}
	if got := redisDo(t, replica.Addr(), "ROLE"); first(got) != "master" {
		t.Errorf("after Failover: ROLE of %s = %q", replica.Addr(), got)
	}
	time.Sleep(300 * time.Millisecond)
	acked, failed = w.stop()
	if got, err = nodeDo(ctx, nil, replica.Addr(), "GET", "n").Int64(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Failover: %d INCRs answered, %d failed; counter on the new master %d: %d answered INCRs lost", acked, failed, got-before, max(0, acked-(got-before)))

	s.Close()
	s.Close()
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Close: %v", s.Dir, err)
	}
	for _, addr := range append(s.SentinelAddrs(), n0.Addr(), n1.Addr()) {
		if err := nodeDo(ctx, nil, addr, "PING").Err(); err == nil {
			t.Errorf("%s answers PING after Close", addr)
		}
	}
}

// counter INCRs the key n in a loop until stopped.
type counter struct {
	cancel        context.CancelFunc
	done          chan struct{}
	acked, failed int64
}

func startCounter(rdb redis.Cmdable) *counter {
	ctx, cancel := context.WithCancel(context.Background())
	c := &counter{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for ctx.Err() == nil {
			if err := rdb.Incr(context.Background(), "n").Err(); err != nil {
				c.failed++
				time.Sleep(10 * time.Millisecond)
			} else {
				c.acked++
			}
		}
	}()
	return c
}

// stop stops the loop and returns how many INCRs were answered and how
// many failed (which may or may not have been applied).
func (c *counter) stop() (acked, failed int64) {
	c.cancel()
	<-c.done
	return c.acked, c.failed
}

// checkRoles requires master and replica to be what the Sentinels, Master
// and Replica and the nodes themselves say.
func checkRoles(ctx context.Context, t *testing.T, s *Sentinel, master, replica *Redis) {
	t.Helper()
	if addr, err := s.MasterAddr(ctx); err != nil || addr != master.Addr() {
		t.Errorf("MasterAddr = %q, %v; want %s", addr, err, master.Addr())
	}
	if m, err := s.Master(ctx); err != nil || m != master {
		t.Errorf("Master = %v, %v; want %s", m, err, master.Addr())
	}
	if r, err := s.Replica(ctx); err != nil || r != replica {
		t.Errorf("Replica = %v, %v; want %s", r, err, replica.Addr())
	}
	if err := replicating(ctx, nil, replica.Addr(), master.Addr()); err != nil {
		t.Error(err)
	}
}

// waitValue waits until key holds want on the server at addr.
func waitValue(ctx context.Context, t *testing.T, addr, key, want string) {
	t.Helper()
	if err := WaitFor(ctx, 20*time.Millisecond, func(ctx context.Context) error {
		if got, err := nodeDo(ctx, nil, addr, "GET", key).Text(); err != nil || got != want {
			return fmt.Errorf("GET %s on %s = %q, %v", key, addr, got, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// first is the first element of a redisDo answer.
func first(reply string) string {
	f, _, _ := strings.Cut(reply, ",")
	return f
}
