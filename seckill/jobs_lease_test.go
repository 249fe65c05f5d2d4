package seckill_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// jobNames are the labels of cachesync_seckill_job_runs_total.
var jobNames = []string{"unpaid", "orphans", "ready", "check", "lag"}

// leaderJobs are the jobs a leader of TestJobsSingleton runs. The periodic
// check is off there: it reports an item as not_ready drift (an error log
// line) while the same process's rebuild of it waits out produce_timeout,
// which, under load, fails the log check of a test that adds an item.
var leaderJobs = []string{"unpaid", "orphans", "ready", "lag"}

// jobsLeaseKey is the jobs lease (default sink.key_prefix).
func (s *stack) jobsLeaseKey() string { return s.ks.Leader("jobs") }

// TestJobsSingleton: two daemons run the jobs role (with api and consumer)
// on one stack. Exactly one holds the jobs lease and runs the jobs; the
// other's job runs stay 0. Unpaid orders and orphaned reservations made
// while the first leads come due only after it is killed with SIGKILL:
// the other takes the lease within the TTL, cancels the orders and reaps
// the orphans (MySQL rows, Redis pending, buyers and stock), and counts
// the runs. The killed daemon, restarted, stays a standby with no job
// runs. All along a sampler scrapes both processes every 25ms: never do
// both report cachesync_leader{lease="jobs"} 1 in one sample, never do
// both counts of job runs grow within 400ms while both answer, and the
// lease changes hands once.
func TestJobsSingleton(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	const (
		item     = 41
		stock    = 10
		unpaid   = 3 // orders left unpaid
		orphans  = 2 // reservations without an order
		due      = 5 * time.Second
		leaseTTL = time.Second // ha.lease_ttl of newJobsChild
	)
	t0 := time.Now()
	bin := testenv.BuildCachesync(t)
	s := newStack(t)
	extra := fmt.Sprintf("unpaid_timeout: %s\norphan_age: %s", due, due)
	a := s.newJobsChild(bin, "jobs-A", extra)
	b := s.newJobsChild(bin, "jobs-B", extra)
	a.start(t)
	b.start(t)
	a.waitUp(t)
	b.waitUp(t)
	ctx := context.Background()
	t.Logf("set-up (build, servers, two daemons) %s", time.Since(t0).Round(time.Millisecond))

	smp := startSampler(s, a, b)
	defer smp.stop()

	// One leader: the lease key names it, it alone says so.
	var lead, stand *jobsChild
	s.eventually(10*time.Second, "one daemon holds the jobs lease", func() bool {
		lead, stand = nil, nil
		for _, c := range []*jobsChild{a, b} {
			if strings.HasSuffix(s.rdb.Get(ctx, s.jobsLeaseKey()).Val(), " "+c.id) {
				lead, stand = c, a
				if c == a {
					stand = b
				}
			}
		}
		return lead != nil && lead.gauge() == 1 && stand.gauge() == 0
	})
	t.Logf("%s holds the jobs lease (%q)", lead.id, s.rdb.Get(ctx, s.jobsLeaseKey()).Val())
	lead.wantRole(t, "leader")
	stand.wantRole(t, "standby")

	s.addItem(item, stock) // the leader's rebuild makes it ready
	l0, s0 := lead.runs(t), stand.runs(t)
	time.Sleep(3 * time.Second)
	l1, s1 := lead.runs(t), stand.runs(t)
	for _, j := range jobNames {
		if s1[j] != 0 {
			t.Errorf("standby %s ran job %s %v times", stand.id, j, s1[j])
		}
	}
	for _, j := range leaderJobs {
		if l1[j] <= l0[j] {
			t.Errorf("leader %s: job %s runs %v -> %v in 3s, want more", lead.id, j, l0[j], l1[j])
		}
	}
	t.Logf("3s of leading: %s job runs %v -> %v; %s %v -> %v", lead.id, l0, l1, stand.id, s0, s1)

	// Unpaid orders, through the standby (it survives), and orphans; all
	// due `due` from now, after the kill below.
	var orders []string
	for u := int64(1); u <= unpaid; u++ {
		r, err := reserveAt(stand.url(), item, u)
		if err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d: %v %+v", u, err, r)
		}
		orders = append(orders, r.Body["order_id"].(string))
	}
	s.eventually(20*time.Second, "the unpaid orders stored, nothing pending", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'created'", item) == unpaid &&
			s.rdb.ZCard(ctx, fmt.Sprintf("sk:{%d}:pending", item)).Val() == 0
	})
	pendingKey, buyersKey := fmt.Sprintf("sk:{%d}:pending", item), fmt.Sprintf("sk:{%d}:buyers", item)
	orphanIDs := map[string]int64{}
	for i := range orphans {
		id, user := fmt.Sprintf("%d-0190f0e0-0000-7000-8000-0000000000c%d", item, i), int64(100+i)
		orphanIDs[id] = user
		s.rdb.ZAdd(ctx, pendingKey, redisZ(float64(time.Now().UnixMilli()), fmt.Sprintf("%s:%d", id, user)))
		s.rdb.HSet(ctx, buyersKey, fmt.Sprint(user), id)
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'canceled'", item); n != 0 {
		t.Fatalf("%d orders canceled before the kill: the leader should not have acted yet", n)
	}

	// kill -9 the leader.
	lead.kill(t)
	tKill := time.Now()
	s.eventually(4*leaseTTL, "the standby takes the jobs lease", func() bool {
		return strings.HasSuffix(s.rdb.Get(ctx, s.jobsLeaseKey()).Val(), " "+stand.id) && stand.gauge() == 1
	})
	takeover := time.Since(tKill)
	t.Logf("%s took the jobs lease %s after the kill", stand.id, takeover.Round(time.Millisecond))
	stand.wantRole(t, "leader")

	s.eventually(due+15*time.Second, "unpaid orders canceled, orphans fenced", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'canceled' AND reason = 'unpaid timeout'", item) == unpaid &&
			s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = ? AND status = 'canceled' AND reason LIKE '%orphan%'", item) == orphans
	})
	s.eventually(10*time.Second, "Redis: nothing pending, no buyers, stock back", func() bool {
		v, err := s.rdb.Get(ctx, fmt.Sprintf("sk:{%d}:stock", item)).Int64()
		return err == nil && v == stock && s.rdb.ZCard(ctx, pendingKey).Val() == 0 && s.rdb.HLen(ctx, buyersKey).Val() == 0
	})
	if n := s.int("SELECT stock FROM sk_items WHERE id = ?", item); n != stock {
		t.Errorf("MySQL stock %d after the cancels, want %d", n, stock)
	}
	for _, o := range orders {
		var status string
		if err := s.db.QueryRow("SELECT status FROM sk_orders WHERE order_id = ?", o).Scan(&status); err != nil || status != "canceled" {
			t.Errorf("unpaid order %s: %q %v, want canceled", o, status, err)
		}
	}
	for id, user := range orphanIDs {
		var u int64
		if err := s.db.QueryRow("SELECT user_id FROM sk_orders WHERE order_id = ? AND status = 'canceled'", id).Scan(&u); err != nil || u != user {
			t.Errorf("orphan %s: fence row user %d %v, want user %d", id, u, err, user)
		}
	}
	sm := stand.metrics(t)
	if v := sm["cachesync_seckill_unpaid_canceled_total"]; v != unpaid {
		t.Errorf("%s canceled %v unpaid orders, want %d (all of them, after the takeover)", stand.id, v, unpaid)
	}
	if v := sm["cachesync_seckill_orphans_reaped_total"]; v != orphans {
		t.Errorf("%s reaped %v orphans, want %d", stand.id, v, orphans)
	}
	s2 := stand.runs(t)
	for _, j := range leaderJobs {
		if s2[j] <= s1[j] {
			t.Errorf("new leader %s: job %s runs %v -> %v since the takeover, want more", stand.id, j, s1[j], s2[j])
		}
	}

	// The killed daemon comes back as a standby and stays one.
	lead.start(t)
	lead.waitUp(t)
	lead.wantRole(t, "standby")
	r0, n0 := lead.runs(t), stand.runs(t)
	time.Sleep(3 * time.Second)
	r1, n1 := lead.runs(t), stand.runs(t)
	for _, j := range jobNames {
		if r1[j] != 0 {
			t.Errorf("restarted %s ran job %s %v times while %s leads", lead.id, j, r1[j], stand.id)
		}
	}
	if n1["unpaid"] <= n0["unpaid"] {
		t.Errorf("leader %s stopped running the unpaid job: %v -> %v", stand.id, n0["unpaid"], n1["unpaid"])
	}
	lead.wantRole(t, "standby")
	stand.wantRole(t, "leader")
	t.Logf("3s after the restart: %s job runs %v -> %v; %s %v -> %v", lead.id, r0, r1, stand.id, n0, n1)

	smp.stop()
	smp.report(t)

	stand.run().Term(t, childTermWithin)
	lead.run().Term(t, childTermWithin)
	a.CheckLogs(t)
	b.CheckLogs(t)
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
}

// jobsChild is a child daemon with every seckill role, its own lease
// holder id and HTTP ports the kernel picks (read from its log).
type jobsChild struct {
	*testenv.Child
	id string

	mu    sync.Mutex
	cur   *testenv.ChildRun
	base  string // http://ADDR of cur's public listener, once known
	admin string // http://ADDR of cur's admin listener, once known
}

func (s *stack) newJobsChild(bin, id, seckillExtra string) *jobsChild {
	s.t.Helper()
	dir, err := os.MkdirTemp("", "cachesync-jobs-child-")
	if err != nil {
		s.t.Fatal(err)
	}
	c := &jobsChild{Child: &testenv.Child{Bin: bin, Config: filepath.Join(dir, "cachesync.yaml"), Dir: dir}, id: id}
	yaml := strings.Replace(s.configYAML(0, 0, seckillExtra), "level: warn", "level: info", 1) +
		"ha:\n  lease_ttl: 1s\n  renew_interval: 300ms\n  poll_interval: 100ms\n  id: " + id + "\n"
	if err := os.WriteFile(c.Config, []byte(yaml), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		c.KillCurrent()
		if s.t.Failed() {
			s.t.Logf("%s: config and logs kept in %s", id, dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return c
}

func (c *jobsChild) start(t *testing.T) {
	t.Helper()
	r := c.Start(t)
	c.mu.Lock()
	c.cur, c.base, c.admin = r, "", ""
	c.mu.Unlock()
}

func (c *jobsChild) run() *testenv.ChildRun {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// url is the current run's public listener, "" while unknown.
func (c *jobsChild) url() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base
}

// adminURL is the current run's admin listener, "" while unknown.
func (c *jobsChild) adminURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.admin
}

// waitUp waits until the current run logged its listeners' addresses and
// "seckill started" and its /metrics answers.
func (c *jobsChild) waitUp(t *testing.T) {
	t.Helper()
	r := c.run()
	ok := pollUntil(30*time.Second, func() bool {
		if r.Exited() {
			return true
		}
		var pub, adm struct{ Addr string }
		if json.Unmarshal([]byte(r.Grep(`"http listening"`)), &pub) != nil || pub.Addr == "" ||
			json.Unmarshal([]byte(r.Grep(`"admin listening"`)), &adm) != nil || adm.Addr == "" || !r.LogHas(`"seckill started"`) {
			return false
		}
		if _, err := scrapeMetrics("http://" + adm.Addr); err != nil {
			return false
		}
		c.mu.Lock()
		c.base, c.admin = "http://"+pub.Addr, "http://"+adm.Addr
		c.mu.Unlock()
		return true
	})
	if !ok || r.Exited() {
		t.Fatalf("%s run %d did not start (exited: %v %v)%s", c.id, r.N, r.Exited(), r.Err(), r.Tail())
	}
}

func (c *jobsChild) kill(t *testing.T) {
	t.Helper()
	c.run().Kill(t)
}

// metrics scrapes the current run or fails the test.
func (c *jobsChild) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	m, err := scrapeMetrics(c.adminURL())
	if err != nil {
		t.Fatalf("%s: %v", c.id, err)
	}
	return m
}

// runs is the current run's job runs by job (0 for a job never run).
func (c *jobsChild) runs(t *testing.T) map[string]float64 {
	t.Helper()
	return jobRuns(c.metrics(t))
}

func jobRuns(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, j := range jobNames {
		out[j] = m[`cachesync_seckill_job_runs_total{job="`+j+`"}`]
	}
	return out
}

// gauge is cachesync_leader{lease="jobs"} of the current run, -1 when it
// cannot be read.
func (c *jobsChild) gauge() float64 {
	m, err := scrapeMetrics(c.adminURL())
	if err != nil {
		return -1
	}
	v, ok := m[`cachesync_leader{lease="jobs"}`]
	if !ok {
		return -1
	}
	return v
}

// wantRole requires /readyz to show the jobs role as role.
func (c *jobsChild) wantRole(t *testing.T, role string) {
	t.Helper()
	r, err := call("GET", c.adminURL()+"/readyz", "")
	if err != nil {
		t.Fatalf("%s /readyz: %v", c.id, err)
	}
	var body struct{ Roles map[string]string }
	if err := json.Unmarshal([]byte(r.Raw), &body); err != nil || body.Roles["jobs"] != role {
		t.Errorf("%s /readyz: %d %s, want roles.jobs %q", c.id, r.Status, strings.TrimSpace(r.Raw), role)
	}
}

// sampler scrapes both daemons every 25ms, each sample from both at
// once, and records every sample in which both say they lead the jobs
// lease, or both answer and both ran jobs within the last ranWithin (a
// leader runs some every job_interval; a killed one does not answer, so
// a takeover is no overlap); it also records the holders the lease key
// named.
type sampler struct {
	s      *stack
	cs     [2]*jobsChild
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	// Written by the sampling goroutine, read after stop.
	samples, both int          // samples, and those with both daemons answering
	leading       [2]int       // samples in which each said it leads
	violations    []string     // both leading, or both running jobs
	holders       []string     // holder ids of the lease key, in order of change
	last          [2]sample    // each daemon's previous answer
	ran           [2]time.Time // when each current run's job runs last grew
}

// ranWithin is twice the job_interval of the stack's configuration.
const ranWithin = 400 * time.Millisecond

type sample struct {
	run    *testenv.ChildRun
	ok     bool
	leader float64
	total  float64 // job runs, every job
}

func startSampler(s *stack, a, b *jobsChild) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	p := &sampler{s: s, cs: [2]*jobsChild{a, b}, cancel: cancel}
	p.wg.Go(func() {
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p.sample(ctx)
		}
	})
	return p
}

func (p *sampler) sample(ctx context.Context) {
	var cur [2]sample
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range p.cs {
		wg.Go(func() {
			cur[i].run = c.run()
			u := c.adminURL()
			if u == "" {
				return
			}
			m, err := scrapeMetrics(u)
			if err != nil {
				return
			}
			cur[i] = sample{run: cur[i].run, ok: true, leader: m[`cachesync_leader{lease="jobs"}`]}
			for _, v := range jobRuns(m) {
				cur[i].total += v
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if v, err := p.s.rdb.Get(ctx, p.s.jobsLeaseKey()).Result(); err == nil {
		holder := v[strings.IndexByte(v, ' ')+1:]
		if n := len(p.holders); n == 0 || p.holders[n-1] != holder {
			p.holders = append(p.holders, holder)
		}
	}
	p.samples++
	if cur[0].ok && cur[1].ok {
		p.both++
	}
	now := time.Now()
	for i := range cur {
		if cur[i].ok && cur[i].leader == 1 {
			p.leading[i]++
		}
		prev := p.last[i]
		if prev.run != cur[i].run {
			p.ran[i] = time.Time{}
		}
		if cur[i].ok && prev.ok && prev.run == cur[i].run && cur[i].total > prev.total {
			p.ran[i] = now
		}
		if cur[i].ok {
			p.last[i] = cur[i]
		} else {
			p.last[i] = sample{}
		}
	}
	at := now.Format("15:04:05.000")
	if !cur[0].ok || !cur[1].ok {
		return
	}
	if cur[0].leader == 1 && cur[1].leader == 1 {
		p.violations = append(p.violations, fmt.Sprintf("%s: both %s and %s report cachesync_leader{lease=\"jobs\"} 1 (scraped within %s)", at, p.cs[0].id, p.cs[1].id, took))
	}
	if !p.ran[0].IsZero() && !p.ran[1].IsZero() && now.Sub(p.ran[0]) < ranWithin && now.Sub(p.ran[1]) < ranWithin {
		p.violations = append(p.violations, fmt.Sprintf("%s: job runs grew in both %s (now %v) and %s (now %v) within %s, both alive",
			at, p.cs[0].id, cur[0].total, p.cs[1].id, cur[1].total, ranWithin))
	}
}

// stop ends the sampling and waits for it; calling it again does nothing.
func (p *sampler) stop() {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
	})
}

// report fails the test on a violation, on too few samples with both
// daemons answering, or on a lease that changed hands other than once.
func (p *sampler) report(t *testing.T) {
	t.Helper()
	t.Logf("sampler: %d samples, %d with both daemons answering; leading in %d (%s) and %d (%s); lease holders in order %v",
		p.samples, p.both, p.leading[0], p.cs[0].id, p.leading[1], p.cs[1].id, p.holders)
	for i, v := range p.violations {
		if i == 20 {
			t.Errorf("… %d violations in all", len(p.violations))
			break
		}
		t.Error(v)
	}
	if p.both < 100 {
		t.Errorf("only %d samples with both daemons answering: the check proved little", p.both)
	}
	if len(p.holders) != 2 {
		t.Errorf("jobs lease holders in order %v: want two, the first leader and the survivor (one takeover, at the kill)", p.holders)
	}
}
