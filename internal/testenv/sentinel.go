package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMasterName is the name the Sentinels of a Sentinel topology
// monitor their master under.
const SentinelMasterName = "cachesync"

// Timings of the Sentinels, low so that a test's failover takes seconds.
const (
	sentinelDownAfter       = 1000 * time.Millisecond // down-after-milliseconds
	sentinelFailoverTimeout = 5000 * time.Millisecond // failover-timeout
)

// Sentinel is a private Redis Sentinel topology: two redis-server nodes
// (Redis values, without persistence like every Redis of this package), one
// started as master and one as its replica, and three Sentinels that monitor
// the master as SentinelMasterName with quorum 2. Every process listens on
// its own free port of 127.0.0.1; the Sentinels keep their configuration
// files (which they rewrite) and logs in subdirectories of Dir.
//
// The nodes are ordinary Redis values: a test may Stop, Kill or Start them
// to make the Sentinels fail over. A node started again gets its original
// arguments (the first node no --replicaof, the second --replicaof the
// first's address) and an empty data set; the Sentinels then reconfigure
// it as they see fit.
//
// The methods are safe for concurrent use.
type Sentinel struct {
	Dir string
	// TLS is the PKI of a topology started with SentinelTLS, nil otherwise.
	TLS *TLSFiles

	tls       *tls.Config // the client side of TLS, for the helpers' connections
	nodes     []*Redis    // in start order: nodes[0] started as the master
	sentinels []*sentinelProc
	clients   []*redis.SentinelClient // one per Sentinel

	mu     sync.Mutex
	closed bool
}

// sentinelProc is one Sentinel process.
type sentinelProc struct {
	port int
	dir  string
	proc *process
}

func (s *sentinelProc) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }
func (s *sentinelProc) logPath() string {
	return filepath.Join(s.dir, "sentinel.log")
}

// SentinelOption configures NewSentinel and StartSentinel.
type SentinelOption func(*Sentinel)

// SentinelTLS makes every process of the topology speak only TLS with f's
// server certificate (the nodes as NewRedisTLS starts them; the Sentinels
// with tls-port and port 0): the Sentinels reach the nodes and one another
// over TLS (tls-replication), the replica its master too, and clients
// must trust f's CA. Client certificates are optional.
func SentinelTLS(f *TLSFiles) SentinelOption {
	return func(s *Sentinel) { s.TLS = f }
}

// NewSentinel starts the topology and blocks until it is ready: the replica
// replicates the master (INFO replication says master_link_status:up), and
// each Sentinel reports the master at its address with no down or failover
// flag, knows the two other Sentinels and lists the replica as an ok
// replica of the master. Each process must answer PING within 60 s, and the
// whole topology must be ready within another 60 s. The binary is
// redis-server (its --sentinel mode): missing, it is an error, never a
// reason to skip. On error nothing is left running. The caller must Close
// the topology.
func NewSentinel(opts ...SentinelOption) (*Sentinel, error) {
	dir, err := os.MkdirTemp("", "testenv-sentinel-")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	s := &Sentinel{Dir: dir}
	for _, o := range opts {
		o(s)
	}
	if s.TLS != nil {
		if s.tls, err = s.TLS.ClientConfig(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// StartSentinel is NewSentinel for tests: it registers Close with tb.Cleanup
// and fails the test with tb.Fatal if the topology cannot be started.
func StartSentinel(tb testing.TB, opts ...SentinelOption) *Sentinel {
	tb.Helper()
	s, err := NewSentinel(opts...)
	if err != nil {
		tb.Fatalf("testenv: start Sentinel: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// start starts the nodes, then the Sentinels, and waits until ready.
func (s *Sentinel) start() error {
	bin, err := LookBinary("redis-server", "redis-server")
	if err != nil {
		return err
	}
	// No delay before a full synchronization: either node may become the
	// master, and a replica (re)joining should sync at once.
	fast := []string{"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
	master, err := newRedis(s.TLS, fast)
	if err != nil {
		return err
	}
	s.nodes = append(s.nodes, master)
	replica, err := newRedis(s.TLS, append(fast, "--replicaof", master.Host, strconv.Itoa(master.Port)))
	if err != nil {
		return err
	}
	s.nodes = append(s.nodes, replica)
	// The Sentinels learn of the replica from the master's INFO, which they
	// read at once when they connect, but otherwise only every 10 s: let
	// the replica be connected before they start.
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		return replicating(ctx, s.tls, replica.Addr(), master.Addr())
	}); err != nil {
		return fmt.Errorf("testenv: replica %s does not replicate %s: %w%s", replica.Addr(), master.Addr(), err, logTails(replica.logPath(), master.logPath()))
	}
	for i := range 3 {
		sp := &sentinelProc{dir: filepath.Join(s.Dir, fmt.Sprintf("sentinel-%d", i+1))}
		if err := os.Mkdir(sp.dir, 0o755); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
		if err := onFreePorts(1, func(p []int) error { sp.port = p[0]; return sp.start(bin, master, s.TLS) }); err != nil {
			return err
		}
		s.sentinels = append(s.sentinels, sp)
		s.clients = append(s.clients, redis.NewSentinelClient(&redis.Options{
			Addr: sp.addr(), DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			TLSConfig: s.tls,
		}))
	}
	if err := s.WaitSettled(ctx); err != nil {
		return fmt.Errorf("testenv: Sentinel topology not ready within %v: %w%s", startTimeout, err, s.logTails())
	}
	return nil
}

// start writes the Sentinel's configuration, starts it and waits until it
// answers PING (over TLS with f's certificate unless f is nil). It wraps
// errAddrInUse if the port was taken.
func (sp *sentinelProc) start(bin string, master *Redis, f *TLSFiles) error {
	conf := filepath.Join(sp.dir, "sentinel.conf")
	listen := fmt.Sprintf("port %d\n", sp.port)
	if f != nil {
		listen = fmt.Sprintf("port 0\ntls-port %d\ntls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\ntls-auth-clients optional\ntls-replication yes\n",
			sp.port, f.ServerCert, f.ServerKey, f.CA)
	}
	text := listen + fmt.Sprintf(`bind 127.0.0.1
dir %[1]s
daemonize no
logfile ""
sentinel monitor %[2]s %[3]s %[4]d 2
sentinel down-after-milliseconds %[2]s %[5]d
sentinel failover-timeout %[2]s %[6]d
sentinel parallel-syncs %[2]s 1
`, sp.dir, SentinelMasterName, master.Host, master.Port, sentinelDownAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds())
	// A failed start leaves a rewritten file behind: start from scratch.
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	log := sp.logPath()
	offset := fileSize(log)
	p, err := startProcess(bin, []string{conf, "--sentinel"}, nil, log)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	r := &Redis{Host: "127.0.0.1", Port: sp.port, TLS: f}
	if err := p.waitReady(r.ping); err != nil {
		p.kill()
		if addrInUse(log, offset) {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("testenv: start redis-server --sentinel on %s: %w%s", sp.addr(), err, logTails(log))
	}
	sp.proc = p
	return nil
}

// MasterName is the name the Sentinels monitor the master under
// (SentinelMasterName), for go-redis's FailoverOptions.MasterName.
func (s *Sentinel) MasterName() string { return SentinelMasterName }

// SentinelAddrs are the Sentinels' addresses, "127.0.0.1:PORT".
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, sp := range s.sentinels {
		addrs[i] = sp.addr()
	}
	return addrs
}

// Nodes returns the two data nodes in start order: Nodes()[0] was started as
// the master, Nodes()[1] as its replica. Their roles change with failovers;
// Master and Replica say which is which now.
func (s *Sentinel) Nodes() []*Redis { return []*Redis{s.nodes[0], s.nodes[1]} }

// MasterAddr asks the Sentinels, in order, for the master's address
// (SENTINEL GET-MASTER-ADDR-BY-NAME) and returns the first answer. It is
// what the Sentinels believe, which lags a failover by up to a second or
// two: see Failover.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for i, c := range s.clients {
		a, err := c.GetMasterAddrByName(ctx, SentinelMasterName).Result()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %v %v", s.sentinels[i].addr(), a, err))
	}
	return "", fmt.Errorf("testenv: no Sentinel names the master: %w", errors.Join(errs...))
}

// Master returns the node the Sentinels name as master (see MasterAddr).
func (s *Sentinel) Master(ctx context.Context) (*Redis, error) {
	m, _, err := s.roles(ctx)
	return m, err
}

// Replica returns the node the Sentinels do not name as master.
func (s *Sentinel) Replica(ctx context.Context) (*Redis, error) {
	_, r, err := s.roles(ctx)
	return r, err
}

func (s *Sentinel) roles(ctx context.Context) (master, replica *Redis, err error) {
	addr, err := s.MasterAddr(ctx)
	if err != nil {
		return nil, nil, err
	}
	switch addr {
	case s.nodes[0].Addr():
		return s.nodes[0], s.nodes[1], nil
	case s.nodes[1].Addr():
		return s.nodes[1], s.nodes[0], nil
	}
	return nil, nil, fmt.Errorf("testenv: the Sentinels name %s as master, which is neither node", addr)
}

// WaitSettled blocks until the topology is in the state NewSentinel returns
// it in, whichever node is the master now: the other node replicates it
// with master_link_status:up, and every Sentinel names the master, flags it
// neither down nor failing over, knows the two other Sentinels and lists
// the other node as an ok replica that reports itself as one. After
// Failover that takes a while: the Sentinels turn the old master into a
// replica only once it has reported itself as master for 8 s, which they
// see in its INFO, read every 10 s (10-20 s in all). It returns ctx's error
// joined with the last unmet condition if ctx ends first.
func (s *Sentinel) WaitSettled(ctx context.Context) error {
	return WaitFor(ctx, 50*time.Millisecond, s.settled)
}

// settled checks the conditions of WaitSettled once.
func (s *Sentinel) settled(ctx context.Context) error {
	master, replica, err := s.roles(ctx)
	if err != nil {
		return err
	}
	if err := replicating(ctx, s.tls, replica.Addr(), master.Addr()); err != nil {
		return err
	}
	for i, c := range s.clients {
		name := s.sentinels[i].addr()
		m, err := c.Master(ctx, SentinelMasterName).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL MASTER: %w", name, err)
		}
		if got := net.JoinHostPort(m["ip"], m["port"]); got != master.Addr() {
			return fmt.Errorf("sentinel %s names %s as master, not %s", name, got, master.Addr())
		}
		if m["flags"] != "master" {
			return fmt.Errorf("sentinel %s: master flags %q", name, m["flags"])
		}
		if m["num-other-sentinels"] != "2" {
			return fmt.Errorf("sentinel %s knows %s other sentinels, want 2", name, m["num-other-sentinels"])
		}
		reps, err := c.Replicas(ctx, SentinelMasterName).Result()
		if err != nil {
			return fmt.Errorf("sentinel %s: SENTINEL REPLICAS: %w", name, err)
		}
		ok := false
		for _, r := range reps {
			if net.JoinHostPort(r["ip"], r["port"]) == replica.Addr() {
				ok = r["flags"] == "slave" && r["role-reported"] == "slave" && r["master-link-status"] == "ok" &&
					net.JoinHostPort(r["master-host"], r["master-port"]) == master.Addr()
				if !ok {
					return fmt.Errorf("sentinel %s: replica %s has flags %q, role-reported %q, master-link-status %q, master %s:%s",
						name, replica.Addr(), r["flags"], r["role-reported"], r["master-link-status"], r["master-host"], r["master-port"])
				}
			}
		}
		if !ok {
			return fmt.Errorf("sentinel %s does not list %s as a replica", name, replica.Addr())
		}
	}
	return nil
}

// Failover makes the Sentinels fail over to the replica with SENTINEL
// FAILOVER, the way an operator does for maintenance, and blocks until it is
// done. It first waits until the topology is settled (WaitSettled), so that
// the replica is in sync and eligible, then sends SENTINEL FAILOVER to a
// Sentinel (again while they answer that they have no good replica yet),
// then waits until every Sentinel names the replica as the master and the
// replica answers ROLE as master. It does not wait for the old master to
// become a replica (see WaitSettled).
//
// Sentinel does not stop writes to the old master: it accepts them from
// clients that have not switched yet (go-redis switches on the Sentinels'
// +switch-master message, about a second after the promotion), and they are
// lost when the old master becomes a replica. FailoverPaused loses none.
// On error, ctx's error joined with the last unmet condition.
func (s *Sentinel) Failover(ctx context.Context) error {
	if err := s.WaitSettled(ctx); err != nil {
		return fmt.Errorf("testenv: failover: topology not settled: %w", err)
	}
	old, next, err := s.roles(ctx)
	if err != nil {
		return fmt.Errorf("testenv: failover: %w", err)
	}
	return s.failover(ctx, old, next)
}

// FailoverPaused is Failover without lost writes, the way Redis's own
// FAILOVER command (which Sentinel does not use) goes about it: it pauses
// writes on the master (CLIENT PAUSE WRITE: write commands, scripts and
// PUBLISH wait, reads go on), waits until the replica's replication offset
// reaches the master's, fails over like Failover, makes the old master a
// replica of the new one (REPLICAOF, which the Sentinels would otherwise do
// themselves some 10-20 s later) and only then unpauses it. A write that
// waited on the old master is then refused with READONLY (or was dropped
// with its connection if the client timed out), never applied there, so
// every write a client got an answer for is on the new master. The pause
// lasts as long as the failover, typically 1-2 s; go-redis's default read
// timeout is 3 s. Writes stay paused for at most 30 s if FailoverPaused
// cannot end the pause itself.
func (s *Sentinel) FailoverPaused(ctx context.Context) error {
	if err := s.WaitSettled(ctx); err != nil {
		return fmt.Errorf("testenv: failover: topology not settled: %w", err)
	}
	old, next, err := s.roles(ctx)
	if err != nil {
		return fmt.Errorf("testenv: failover: %w", err)
	}
	if err := nodeDo(ctx, s.tls, old.Addr(), "CLIENT", "PAUSE", 30_000, "WRITE").Err(); err != nil {
		return fmt.Errorf("testenv: failover: CLIENT PAUSE on %s: %w", old.Addr(), err)
	}
	unpaused := false
	defer func() {
		if !unpaused {
			_ = nodeDo(context.WithoutCancel(ctx), s.tls, old.Addr(), "CLIENT", "UNPAUSE").Err()
		}
	}()
	if err := WaitFor(ctx, 10*time.Millisecond, func(ctx context.Context) error {
		m, err := replicationInfo(ctx, s.tls, old.Addr())
		if err != nil {
			return err
		}
		r, err := replicationInfo(ctx, s.tls, next.Addr())
		if err != nil {
			return err
		}
		if m["master_repl_offset"] != r["slave_repl_offset"] {
			return fmt.Errorf("replica %s at offset %s, master %s at %s", next.Addr(), r["slave_repl_offset"], old.Addr(), m["master_repl_offset"])
		}
		return nil
	}); err != nil {
		return fmt.Errorf("testenv: failover: replica does not catch up: %w", err)
	}
	if err := s.failover(ctx, old, next); err != nil {
		return err
	}
	if err := nodeDo(ctx, s.tls, old.Addr(), "REPLICAOF", next.Host, next.Port).Err(); err != nil {
		return fmt.Errorf("testenv: failover: REPLICAOF on the old master %s: %w", old.Addr(), err)
	}
	if err := nodeDo(ctx, s.tls, old.Addr(), "CLIENT", "UNPAUSE").Err(); err != nil {
		return fmt.Errorf("testenv: failover: CLIENT UNPAUSE on %s: %w", old.Addr(), err)
	}
	unpaused = true
	return nil
}

// failover sends SENTINEL FAILOVER and waits until every Sentinel names
// next as master and next answers ROLE as master.
func (s *Sentinel) failover(ctx context.Context, old, next *Redis) error {
	if err := WaitFor(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		var errs []error
		for _, c := range s.clients {
			err := c.Failover(ctx, SentinelMasterName).Err()
			// INPROG: a Sentinel is failing over on its own already.
			if err == nil || strings.HasPrefix(err.Error(), "INPROG") {
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}); err != nil {
		return fmt.Errorf("testenv: SENTINEL FAILOVER: %w", err)
	}
	if err := WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		for i, c := range s.clients {
			a, err := c.GetMasterAddrByName(ctx, SentinelMasterName).Result()
			if err != nil {
				return fmt.Errorf("sentinel %s: %w", s.sentinels[i].addr(), err)
			}
			if got := net.JoinHostPort(a[0], a[1]); got != next.Addr() {
				return fmt.Errorf("sentinel %s still names %s as master", s.sentinels[i].addr(), got)
			}
		}
		role, err := nodeRole(ctx, s.tls, next.Addr())
		if err != nil {
			return err
		}
		if role != "master" {
			return fmt.Errorf("%s answers ROLE %s", next.Addr(), role)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("testenv: failover from %s to %s: %w%s", old.Addr(), next.Addr(), err, s.logTails())
	}
	return nil
}

// Close kills the Sentinels, then closes the nodes, and removes Dir.
// Calling it again does nothing.
func (s *Sentinel) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, c := range s.clients {
		c.Close()
	}
	for _, sp := range s.sentinels {
		if sp.proc != nil {
			sp.proc.kill()
		}
	}
	for _, n := range s.nodes {
		n.Close()
	}
	os.RemoveAll(s.Dir)
}

// logTails formats the end of every log of the topology.
func (s *Sentinel) logTails() string {
	var paths []string
	for _, n := range s.nodes {
		paths = append(paths, n.logPath())
	}
	for _, sp := range s.sentinels {
		paths = append(paths, sp.logPath())
	}
	return logTails(paths...)
}

// nodeDo runs one command on the server at addr over a new connection
// (TLS with tc unless it is nil).
func nodeDo(ctx context.Context, tc *tls.Config, addr string, args ...any) *redis.Cmd {
	c := redis.NewClient(&redis.Options{
		Addr: addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		MaxRetries: -1, PoolSize: 1, DialerRetries: 1, TLSConfig: tc,
	})
	defer c.Close()
	return c.Do(ctx, args...)
}

// nodeRole is the first element of ROLE: master, slave or sentinel.
func nodeRole(ctx context.Context, tc *tls.Config, addr string) (string, error) {
	v, err := nodeDo(ctx, tc, addr, "ROLE").Slice()
	if err != nil {
		return "", fmt.Errorf("%s: ROLE: %w", addr, err)
	}
	if len(v) == 0 {
		return "", fmt.Errorf("%s: ROLE: empty answer", addr)
	}
	role, _ := v[0].(string)
	return role, nil
}

// replicationInfo returns the fields of INFO replication of the node at addr.
func replicationInfo(ctx context.Context, tc *tls.Config, addr string) (map[string]string, error) {
	info, err := nodeDo(ctx, tc, addr, "INFO", "replication").Text()
	if err != nil {
		return nil, fmt.Errorf("%s: INFO replication: %w", addr, err)
	}
	return fields(info), nil
}

// replicating checks that the node at addr is a replica of master with
// master_link_status:up.
func replicating(ctx context.Context, tc *tls.Config, addr, master string) error {
	f, err := replicationInfo(ctx, tc, addr)
	if err != nil {
		return err
	}
	if f["role"] != "slave" {
		return fmt.Errorf("%s: role:%s, want slave", addr, f["role"])
	}
	if got := net.JoinHostPort(f["master_host"], f["master_port"]); got != master {
		return fmt.Errorf("%s replicates %s, not %s", addr, got, master)
	}
	if f["master_link_status"] != "up" {
		return fmt.Errorf("%s: master_link_status:%s", addr, f["master_link_status"])
	}
	return nil
}
