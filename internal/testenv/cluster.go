package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ClusterMode reports whether the suites that can run on either are asked
// to run on a Redis Cluster instead of one Redis:
// CACHESYNC_TEST_REDIS_MODE=cluster (the Makefile's test target runs them
// both ways).
func ClusterMode() bool { return os.Getenv("CACHESYNC_TEST_REDIS_MODE") == "cluster" }

// ClusterShards is the number of masters of a RedisCluster; each has one
// replica.
const ClusterShards = 3

// ClusterNodeTimeout is the cluster-node-timeout of a RedisCluster's nodes:
// a master that does not answer for this long is marked failed and its
// replica promoted, about a second later. Low so that a test's failover
// takes seconds; high enough that a node busy with a long script on a
// loaded 2-core machine is not failed over by mistake.
const ClusterNodeTimeout = 2000 * time.Millisecond

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// RedisCluster is a private Redis Cluster: six redis-server nodes started
// with --cluster-enabled yes, joined by redis-cli --cluster create with
// --cluster-replicas 1 into three masters, which serve the 16384 hash
// slots in three ranges, and one replica of each. Every node is a Redis of
// this package (no persistence) listening on its own free port of
// 127.0.0.1 with its cluster bus on another (--cluster-port); its log and
// its cluster configuration file (nodes.conf) are in its own subdirectory
// of Dir.
//
// A shard is a master and its replica as redis-cli paired them; shard i is
// the one that served the i-th slot range (0-5460, 5461-10922,
// 10923-16383) at start. Which of the two is the master changes with
// failovers; the pair does not. A node a test Kills and Starts again keeps
// its nodes.conf, so it rejoins the cluster under its old identity, with an
// empty data set; if its replica was promoted meanwhile, it becomes that
// node's replica.
//
// With ClusterTLS every node speaks only TLS (see ClusterTLS).
//
// The methods are safe for concurrent use.
type RedisCluster struct {
	Dir string
	// TLS is the PKI of a cluster started with ClusterTLS, nil otherwise.
	TLS *TLSFiles

	tls    *tls.Config // the client side of TLS, for the helpers' connections
	args   []string    // extra redis-server arguments, from ClusterArgs
	nodes  []*Redis    // in start order
	ids    map[string]*Redis
	shards [ClusterShards][2]*Redis // master and replica at start, by slot range

	mu     sync.Mutex
	closed bool
	keep   bool // Close leaves Dir and the logs in it
}

// ClusterOption configures NewRedisCluster and StartRedisCluster.
type ClusterOption func(*RedisCluster)

// ClusterTLS makes every node speak only TLS with f's server certificate,
// as NewRedisTLS starts a Redis (--tls-port, --port 0, client certificates
// optional, --tls-replication yes), and with --tls-cluster yes: the
// cluster bus is TLS too, and the nodes report their TLS port in CLUSTER
// SLOTS, CLUSTER SHARDS and MOVED. redis-cli --cluster create runs with
// --tls, f's CA and its client certificate. Addrs are the TLS addresses;
// clients must trust f's CA.
func ClusterTLS(f *TLSFiles) ClusterOption {
	return func(c *RedisCluster) { c.TLS = f }
}

// ClusterArgs adds redis-server arguments to every node, after the
// package's own (a later argument wins), e.g. "--tls-auth-clients", "yes"
// to require client certificates with ClusterTLS.
func ClusterArgs(args ...string) ClusterOption {
	return func(c *RedisCluster) { c.args = append(c.args, args...) }
}

// NewRedisCluster starts the cluster and blocks until it is healthy (see
// WaitHealthy): every node says cluster_state:ok with all 16384 slots
// served, all agree on which node serves which slots, and each replica
// replicates its master with master_link_status:up. Each node must answer
// PING within 60 s, redis-cli must create the cluster within 60 s and the
// cluster must be healthy within another 60 s (it takes about 3 s). The
// binaries are redis-server and redis-cli (Debian packages redis-server
// and redis-tools): missing, they are an error, never a reason to skip. On
// error nothing is left running and the error holds the end of every log.
// The caller must Close the cluster.
func NewRedisCluster(opts ...ClusterOption) (*RedisCluster, error) {
	server, err := LookBinary("redis-server", "redis-server")
	if err != nil {
		return nil, err
	}
	cli, err := LookBinary("redis-cli", "redis-tools")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "testenv-redis-cluster-")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	c := &RedisCluster{Dir: dir, ids: map[string]*Redis{}}
	for _, o := range opts {
		o(c)
	}
	if c.TLS != nil {
		if c.tls, err = c.TLS.ClientConfig(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := c.start(server, cli); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// StartRedisCluster is NewRedisCluster for tests: it fails the test with
// tb.Fatal if the cluster cannot be started, and registers Close with
// tb.Cleanup. If the test failed, Close leaves Dir behind with every
// node's log and nodes.conf, and says where.
func StartRedisCluster(tb testing.TB, opts ...ClusterOption) *RedisCluster {
	tb.Helper()
	c, err := NewRedisCluster(opts...)
	if err != nil {
		tb.Fatalf("testenv: start Redis Cluster: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			c.mu.Lock()
			c.keep = true
			c.mu.Unlock()
			tb.Logf("testenv: Redis Cluster logs kept in %s", c.Dir)
		}
		c.Close()
	})
	return c
}

// start starts the nodes, creates the cluster and waits until it is
// healthy.
func (c *RedisCluster) start(server, cli string) error {
	// Start the six nodes side by side: each takes a moment to load.
	nodes := make([]*Redis, 2*ClusterShards)
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { nodes[i], errs[i] = c.startNode(server, i) })
	}
	wg.Wait()
	for _, n := range nodes {
		if n != nil {
			c.nodes = append(c.nodes, n)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.create(ctx, cli); err != nil {
		return err
	}
	for _, n := range c.nodes {
		id, err := nodeDo(ctx, c.tls, n.Addr(), "CLUSTER", "MYID").Text()
		if err != nil {
			return fmt.Errorf("testenv: %s: CLUSTER MYID: %w", n.Addr(), err)
		}
		c.ids[id] = n
	}
	ctx, cancel = context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var view clusterView
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		var err error
		view, err = c.healthy(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("testenv: Redis Cluster not healthy within %v: %w%s", startTimeout, err, c.logTails())
	}
	if len(view) != ClusterShards {
		return fmt.Errorf("testenv: Redis Cluster has %d slot ranges, want %d: %v", len(view), ClusterShards, view)
	}
	for i, r := range view {
		if len(r.replicas) != 1 {
			return fmt.Errorf("testenv: slots %d-%d have %d replicas, want 1", r.start, r.end, len(r.replicas))
		}
		c.shards[i] = [2]*Redis{r.master, r.replicas[0]}
	}
	return nil
}

// startNode starts node i on two free ports (clients, cluster bus) in its
// own subdirectory.
func (c *RedisCluster) startNode(bin string, i int) (*Redis, error) {
	dir := filepath.Join(c.Dir, fmt.Sprintf("node-%d", i+1))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	r := &Redis{Host: "127.0.0.1", Dir: dir, TLS: c.TLS, bin: bin}
	err := onFreePorts(2, func(p []int) error {
		r.Port = p[0]
		r.args = []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10),
			// Not port+10000, which is in the ephemeral range.
			"--cluster-port", strconv.Itoa(p[1]),
			// A replica fails over however long it was cut off from its
			// master: tests want the cluster back, not the freshest data.
			"--cluster-replica-validity-factor", "0",
			// A replica (re)joining syncs at once.
			"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
		}
		if c.TLS != nil {
			// The cluster bus over TLS; r.start adds the rest.
			r.args = append(r.args, "--tls-cluster", "yes")
		}
		r.args = append(r.args, c.args...)
		// A failed attempt leaves a nodes.conf naming the old ports.
		os.Remove(filepath.Join(dir, "nodes.conf"))
		return r.start()
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// create runs redis-cli --cluster create on the nodes; its output goes to
// Dir/cluster-create.log.
func (c *RedisCluster) create(ctx context.Context, cli string) error {
	log := filepath.Join(c.Dir, "cluster-create.log")
	var args []string
	if c.TLS != nil {
		args = []string{"--tls", "--cacert", c.TLS.CA, "--cert", c.TLS.ClientCert, "--key", c.TLS.ClientKey}
	}
	args = append(args, "--cluster", "create")
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	out, err := cmd.CombinedOutput()
	if werr := os.WriteFile(log, out, 0o644); werr != nil && err == nil {
		err = werr
	}
	// redis-cli exits 0 after some errors; "[OK] All 16384 slots covered."
	// is the last line of a successful create.
	if err == nil && !strings.Contains(string(out), "[OK] All 16384 slots covered") {
		err = errors.New("no \"[OK] All 16384 slots covered\" in its output")
	}
	if err != nil {
		return fmt.Errorf("testenv: redis-cli %s: %w%s", strings.Join(args, " "), err, c.logTails())
	}
	return nil
}

// Nodes returns the six nodes in start order (not by role).
func (c *RedisCluster) Nodes() []*Redis { return slices.Clone(c.nodes) }

// Addrs returns the addresses of the six nodes, the seeds a
// redis.ClusterClient (ClusterOptions.Addrs) needs.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Shard returns the two nodes of shard i (0 ≤ i < ClusterShards) in their
// roles now: the one that answers ROLE as master and the other. It is an
// error if neither or both do (during a failover), or if a node is not
// running and the other is not a master.
func (c *RedisCluster) Shard(ctx context.Context, i int) (master, replica *Redis, err error) {
	if i < 0 || i >= ClusterShards {
		return nil, nil, fmt.Errorf("testenv: shard %d: want 0..%d", i, ClusterShards-1)
	}
	var masters, others []*Redis
	for _, n := range c.shards[i] {
		if n.PID() == 0 {
			others = append(others, n)
			continue
		}
		role, err := nodeRole(ctx, c.tls, n.Addr())
		if err != nil {
			return nil, nil, fmt.Errorf("testenv: shard %d: %w", i, err)
		}
		if role == "master" {
			masters = append(masters, n)
		} else {
			others = append(others, n)
		}
	}
	if len(masters) != 1 {
		return nil, nil, fmt.Errorf("testenv: shard %d (%s, %s): %d nodes answer ROLE master, want 1", i, c.shards[i][0].Addr(), c.shards[i][1].Addr(), len(masters))
	}
	return masters[0], others[0], nil
}

// Masters returns the master of each shard now (see Shard).
func (c *RedisCluster) Masters(ctx context.Context) ([]*Redis, error) {
	var ms []*Redis
	for i := range ClusterShards {
		m, _, err := c.Shard(ctx, i)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// Replicas returns the replica of each shard now (see Shard); a replica
// that was killed is in the list all the same.
func (c *RedisCluster) Replicas(ctx context.Context) ([]*Redis, error) {
	var rs []*Redis
	for i := range ClusterShards {
		_, r, err := c.Shard(ctx, i)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// KillMaster kills the master of shard i with SIGKILL, like a crash, and
// returns it once it has exited; Start brings it back (see RedisCluster).
// It does not wait for the failover: about ClusterNodeTimeout later the
// other nodes mark it failed and its replica takes over, which WaitHealthy
// waits for. Meanwhile the shard's slots are unavailable.
func (c *RedisCluster) KillMaster(ctx context.Context, i int) (*Redis, error) {
	m, _, err := c.Shard(ctx, i)
	if err != nil {
		return nil, err
	}
	return m, m.Kill()
}

// Failover makes replica its master's master with CLUSTER FAILOVER, the
// way an operator does for maintenance, and blocks until the cluster is
// healthy again with replica serving the slots. It first waits until the
// cluster is healthy, so that replica is in sync. The coordinated
// failover loses no acknowledged write: the master pauses its clients
// until replica has its whole replication stream, and answers MOVED once
// it is a replica. On error, the last unmet condition joined with ctx's
// error.
func (c *RedisCluster) Failover(ctx context.Context, replica *Redis) error {
	if replica == nil || !slices.Contains(c.nodes, replica) {
		return errors.New("testenv: failover: not a node of this cluster")
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return fmt.Errorf("testenv: failover: cluster not healthy: %w", err)
	}
	if err := nodeDo(ctx, c.tls, replica.Addr(), "CLUSTER", "FAILOVER").Err(); err != nil {
		return fmt.Errorf("testenv: CLUSTER FAILOVER on %s: %w", replica.Addr(), err)
	}
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		view, err := c.healthy(ctx)
		if err != nil {
			return err
		}
		for _, r := range view {
			if r.master == replica {
				return nil
			}
		}
		return fmt.Errorf("%s serves no slots as master yet", replica.Addr())
	}); err != nil {
		return fmt.Errorf("testenv: failover to %s: %w%s", replica.Addr(), err, c.logTails())
	}
	return nil
}

// Close kills every node and removes Dir (see StartRedisCluster for when
// it stays). Calling it again does nothing.
func (c *RedisCluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for _, n := range c.nodes {
		if c.keep {
			_ = n.Kill() // keeps n.Dir
		} else {
			n.Close()
		}
	}
	if !c.keep {
		os.RemoveAll(c.Dir)
	}
}

// logTails formats the end of every log of the cluster.
func (c *RedisCluster) logTails() string {
	paths := []string{filepath.Join(c.Dir, "cluster-create.log")}
	for _, n := range c.nodes {
		paths = append(paths, n.logPath())
	}
	return logTails(paths...)
}
