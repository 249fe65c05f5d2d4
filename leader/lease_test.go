package leader

// Integration tests of the lease against real redis-server processes
// (internal/testenv), with small timings so the package runs in seconds.
// Bounds on durations are generous upper bounds only. The timings assume
// the test process is never stalled for as long as a LeaseTTL (300 ms).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

const leaseName = "jobs"

// slack is added to every bound that follows from the lease's timings: it
// absorbs scheduling delays under -race, not behaviour.
const slack = 300 * time.Millisecond

// testConfig has a tenth of the default TTL and renew interval, in the
// same ratio (renew = ttl/3).
func testConfig(id string) Config {
	return Config{LeaseTTL: 300 * time.Millisecond, RenewInterval: 100 * time.Millisecond,
		PollInterval: 20 * time.Millisecond, ID: id}
}

// prefix is a key prefix of the test's own.
func prefix(t *testing.T) string { return "leadertest:" + t.Name() + ":" }

// newClient is a client with the options internal/daemon.RedisOptions
// gives the daemon (go-redis defaults otherwise).
func newClient(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func newLease(t *testing.T, cfg Config, rdb redis.UniversalClient, keyPrefix string, reg prometheus.Registerer) *Lease {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	return New(cfg, rdb, keyspace.Keyspace{Prefix: keyPrefix}, zerolog.Nop(), reg).Lease(leaseName)
}

// campaign returns a term of l or fails the test if none comes within the
// bound. The term outlives the bound (its context derives from Campaign's)
// and is released when the test ends.
func campaign(t *testing.T, l *Lease, within time.Duration) *Term {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	timer := time.AfterFunc(within, cancel)
	term, err := l.Campaign(ctx)
	if err != nil {
		t.Fatalf("%s: no term within %s: %v", l.e.ID(), within, err)
	}
	t.Cleanup(term.Release)
	if !timer.Stop() {
		t.Fatalf("%s: term came at the bound %s; its context is cancelled", l.e.ID(), within)
	}
	return term
}

// waitDone fails the test unless ctx ends within the bound.
func waitDone(t *testing.T, ctx context.Context, within time.Duration, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(within):
		t.Fatalf("%s: term still live after %s", what, within)
	}
}

func tokenOf(t *testing.T, value string) uint64 {
	t.Helper()
	tok, err := strconv.ParseUint(strings.SplitN(value, " ", 2)[0], 10, 64)
	if err != nil {
		t.Fatalf("lease value %q: %v", value, err)
	}
	return tok
}

// TestExclusiveUnderConcurrency: electors of one lease, each with its own
// id and client state, take and release it for ~3 s; no two of their terms
// are live at once, tokens only grow, and every elector leads.
func TestExclusiveUnderConcurrency(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	p := prefix(t)
	const electors = 8
	runCtx, stop := context.WithCancel(t.Context())
	defer stop()

	var (
		active atomic.Int32 // electors between taking the lease and releasing it
		mu     sync.Mutex
		live   = map[int]*Term{} // each elector's current term
		began  = map[*Term]time.Time{}
		tokens []uint64 // in the order the terms began
		led    [electors]int
		// overlaps: the earlier term of each pair, reported with its
		// cause once it is over
		overlaps []*Term
	)
	enter := func(g int, term *Term) {
		mu.Lock()
		defer mu.Unlock()
		if active.Add(1) > 1 {
			// Another elector has not released yet. That is allowed only
			// if its term is over (lost or expired): the guarantee is that
			// no two live terms overlap.
			for o, other := range live {
				if other.Context().Err() == nil && term.Context().Err() == nil {
					t.Errorf("elector %d took the lease (token %d) while elector %d's term (token %d, begun %s ago) is live",
						g, term.Token, o, other.Token, time.Since(began[other]).Round(time.Millisecond))
					overlaps = append(overlaps, other)
				}
			}
		}
		live[g] = term
		began[term] = time.Now()
		tokens = append(tokens, term.Token)
		led[g]++
	}
	leave := func(g int) {
		mu.Lock()
		defer mu.Unlock()
		delete(live, g)
		active.Add(-1)
	}

	var wg sync.WaitGroup
	// Stop after 3 s, or once every elector has led if that takes longer
	// (a loaded machine), but after 10 s at most.
	wg.Go(func() {
		atMost := time.After(10 * time.Second)
		for wait := time.After(3 * time.Second); ; wait = time.After(50 * time.Millisecond) {
			select {
			case <-wait:
			case <-atMost:
				stop()
				return
			}
			mu.Lock()
			all := !slices.Contains(led[:], 0)
			mu.Unlock()
			if all {
				stop()
				return
			}
		}
	})
	for g := range electors {
		cfg := testConfig(fmt.Sprintf("elector-%d", g))
		l := newLease(t, cfg, rdb, p, prometheus.NewRegistry())
		wg.Go(func() {
			for {
				term, err := l.Campaign(runCtx)
				if err != nil {
					if runCtx.Err() == nil {
						t.Errorf("elector %d: Campaign: %v", g, err)
					}
					return
				}
				enter(g, term)
				hold := rand.N(20 * time.Millisecond)
				if rand.N(10) == 0 {
					hold = cfg.LeaseTTL / 2 // outlives a renewal
				}
				select {
				case <-time.After(hold):
				case <-term.Context().Done():
				}
				term.Release()
				leave(g)
				// Campaign tries at once, so the elector that just
				// released would win again: stand aside for a few polls.
				select {
				case <-time.After(cfg.PollInterval + rand.N(2*cfg.PollInterval)):
				case <-runCtx.Done():
					return
				}
			}
		})
	}
	wg.Wait()

	t.Logf("%d terms; per elector %v", len(tokens), led)
	for _, term := range overlaps {
		t.Errorf("the term of token %d, overlapped, ended by %v", term.Token, context.Cause(term.Context()))
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("term %d has token %d after token %d: tokens must strictly increase", i, tokens[i], tokens[i-1])
		}
	}
	for g, n := range led {
		if n == 0 {
			t.Errorf("elector %d never led", g)
		}
	}
}

// TestTokenNeverReusedAfterRewind: a Redis restored from an old file has
// an older fence counter (or none); the next token is still larger than
// every token handed out before.
func TestTokenNeverReusedAfterRewind(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	ks := keyspace.Keyspace{Prefix: prefix(t)}
	l := newLease(t, testConfig("a"), rdb, ks.Prefix, nil)
	fence := ks.Fence(leaseName)

	rewinds := []struct {
		name   string
		rewind func(ctx context.Context) error
	}{
		{"fence counter gone", func(ctx context.Context) error { return rdb.Del(ctx, fence).Err() }},
		{"fence counter at 1", func(ctx context.Context) error { return rdb.Set(ctx, fence, "1", 0).Err() }},
	}
	var last uint64
	for _, rw := range rewinds {
		t.Run(rw.name, func(t *testing.T) {
			for range 3 { // a history to rewind
				term := campaign(t, l, 2*time.Second)
				if term.Token <= last {
					t.Fatalf("token %d after token %d", term.Token, last)
				}
				last = term.Token
				term.Release()
			}
			if err := rw.rewind(t.Context()); err != nil {
				t.Fatal(err)
			}
			term := campaign(t, l, 2*time.Second)
			if term.Token <= last {
				t.Errorf("token %d after the rewind; want more than %d, handed out before", term.Token, last)
			}
			last = term.Token
			if got, err := rdb.Get(t.Context(), fence).Uint64(); err != nil || got != term.Token {
				t.Errorf("fence counter %d (%v), want the new token %d", got, err, term.Token)
			}
			term.Release()
		})
	}
}

// TestLost: another value in the lease key ends the term with ErrLost at
// the next renewal, and Release leaves the other holder's value alone.
func TestLost(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	cfg := testConfig("a")
	reg := prometheus.NewRegistry()
	l := newLease(t, cfg, rdb, prefix(t), reg)
	leaderGauge := l.e.leader.WithLabelValues(leaseName)

	term := campaign(t, l, 2*time.Second)
	if got := testutil.ToFloat64(leaderGauge); got != 1 {
		t.Fatalf("cachesync_leader %v during the term, want 1", got)
	}
	other := fmt.Sprintf("%d intruder", term.Token+1)
	if err := rdb.Set(t.Context(), l.key, other, 10*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, term.Context(), 2*cfg.RenewInterval+slack, "lease overwritten")
	if cause := context.Cause(term.Context()); !errors.Is(cause, ErrLost) {
		t.Errorf("cause %v, want ErrLost", cause)
	}
	if got := l.Role(); got != "standby" {
		t.Errorf("Role %q after the loss, want standby", got)
	}

	term.Release()
	if got, err := rdb.Get(t.Context(), l.key).Result(); err != nil || got != other {
		t.Errorf("lease holds %q (%v) after Release, want the other holder's %q", got, err, other)
	}
	if got := testutil.ToFloat64(leaderGauge); got != 0 {
		t.Errorf("cachesync_leader %v after the loss, want 0", got)
	}
	for event, want := range map[string]float64{"acquired": 1, "lost": 1} {
		if got := testutil.ToFloat64(l.e.events.WithLabelValues(leaseName, event)); got != want {
			t.Errorf("cachesync_leader_transitions_total{event=%q} %v, want %v", event, got, want)
		}
	}
	// acquired and lost, no "released": Release deleted nothing.
	if n, err := testutil.GatherAndCount(reg, "cachesync_leader_transitions_total"); err != nil || n != 2 {
		t.Errorf("%d transition series (%v), want 2 (acquired, lost)", n, err)
	}
}

// TestExpiredWhileRedisDown: with Redis gone the term ends with ErrExpired
// once its TTL has passed; when Redis is back a new Campaign succeeds.
func TestExpiredWhileRedisDown(t *testing.T) {
	rs := testenv.StartRedis(t)
	rdb := newClient(t, rs.Addr())
	cfg := testConfig("a")
	l := newLease(t, cfg, rdb, prefix(t), prometheus.NewRegistry())

	term := campaign(t, l, 2*time.Second)
	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, term.Context(), cfg.LeaseTTL+cfg.RenewInterval+slack, "Redis stopped")
	if cause := context.Cause(term.Context()); !errors.Is(cause, ErrExpired) {
		t.Errorf("cause %v, want ErrExpired", cause)
	}
	if got := testutil.ToFloat64(l.e.events.WithLabelValues(leaseName, "expired")); got != 1 {
		t.Errorf("cachesync_leader_transitions_total{event=\"expired\"} %v, want 1", got)
	}
	term.Release() // Redis still down: must return all the same

	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	next := campaign(t, l, 5*time.Second)
	if next.Context().Err() != nil || l.Role() != "leader" {
		t.Errorf("new term not live (%v), Role %q", context.Cause(next.Context()), l.Role())
	}
	// The restarted Redis is empty, fence counter included: a rewind.
	if next.Token <= term.Token {
		t.Errorf("token %d after the restart, want more than %d", next.Token, term.Token)
	}
}

// TestRelease: Release deletes the lease at once, so a standby takes over
// at its next poll rather than after the TTL; a second Release is a no-op.
func TestRelease(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	p := prefix(t)
	// A TTL far above the handover bound below: only Release, not
	// expiry, can hand the lease over in time.
	cfg := testConfig("a")
	cfg.LeaseTTL, cfg.RenewInterval = 3*time.Second, time.Second
	a := newLease(t, cfg, rdb, p, prometheus.NewRegistry())
	cfgB := cfg
	cfgB.ID = "b"
	b := newLease(t, cfgB, rdb, p, nil)
	released := func() float64 { return testutil.ToFloat64(a.e.events.WithLabelValues(leaseName, "released")) }

	if got := a.Role(); got != "standby" {
		t.Errorf("Role %q before any term, want standby", got)
	}
	term := campaign(t, a, 2*time.Second)
	if want := fmt.Sprintf("%d a", term.Token); term.Value != want {
		t.Errorf("term value %q, want %q", term.Value, want)
	}
	if got, _ := rdb.Get(t.Context(), a.key).Result(); got != term.Value {
		t.Errorf("lease holds %q, want the term's %q", got, term.Value)
	}
	if got := a.Role(); got != "leader" {
		t.Errorf("Role %q during the term, want leader", got)
	}
	term.Release()
	if n, err := rdb.Exists(t.Context(), a.key).Result(); err != nil || n != 0 {
		t.Errorf("lease key exists (%d, %v) right after Release", n, err)
	}
	if cause := context.Cause(term.Context()); !errors.Is(cause, ErrReleased) {
		t.Errorf("cause %v, want ErrReleased", cause)
	}
	if got := a.Role(); got != "standby" {
		t.Errorf("Role %q after Release, want standby", got)
	}
	term.Release()
	if got := released(); got != 1 {
		t.Errorf("%v released transitions after two Releases, want 1", got)
	}

	// Handover to a standby.
	term = campaign(t, a, 2*time.Second)
	type result struct {
		term *Term
		err  error
		at   time.Time
	}
	got := make(chan result, 1)
	bctx, bcancel := context.WithCancel(t.Context())
	t.Cleanup(bcancel)
	go func() {
		bt, err := b.Campaign(bctx)
		got <- result{bt, err, time.Now()}
	}()
	select {
	case r := <-got:
		t.Fatalf("b's Campaign returned while a holds the lease: %v", r.err)
	case <-time.After(3 * cfg.PollInterval):
	}
	term.Release()
	releasedAt := time.Now()
	var r result
	select {
	case r = <-got:
	case <-time.After(3*cfg.PollInterval + slack):
		t.Fatalf("b has no term %s after a's Release (TTL %s)", 3*cfg.PollInterval+slack, cfg.LeaseTTL)
	}
	if r.err != nil {
		t.Fatalf("b's Campaign: %v", r.err)
	}
	t.Cleanup(r.term.Release)
	t.Logf("b took over %s after Release", r.at.Sub(releasedAt))
	if r.term.Token <= term.Token {
		t.Errorf("b's token %d, want more than a's %d", r.term.Token, term.Token)
	}
	term.Release() // again, now that b holds the lease
	if v, _ := rdb.Get(t.Context(), a.key).Result(); v != r.term.Value {
		t.Errorf("lease holds %q after a's second Release, want b's %q", v, r.term.Value)
	}
	if a.Role() != "standby" || b.Role() != "leader" {
		t.Errorf("Roles a=%q b=%q, want standby and leader", a.Role(), b.Role())
	}
	if got := released(); got != 2 {
		t.Errorf("%v released transitions, want 2", got)
	}
}

// TestRenewalKeepsTheLease: a term left alone for several TTLs stays live,
// its key never expires, and a standby never gets in.
func TestRenewalKeepsTheLease(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	p := prefix(t)
	cfg := testConfig("a")
	a := newLease(t, cfg, rdb, p, nil)
	cfgB := cfg
	cfgB.ID = "b"
	b := newLease(t, cfgB, rdb, p, nil)

	term := campaign(t, a, 2*time.Second)
	hold := 5 * cfg.LeaseTTL
	bctx, bcancel := context.WithTimeout(t.Context(), hold-cfg.LeaseTTL)
	defer bcancel()
	bres := make(chan error, 1)
	go func() {
		bt, err := b.Campaign(bctx)
		if bt != nil {
			bt.Release()
			err = fmt.Errorf("took the lease, token %d", bt.Token)
		}
		bres <- err
	}()

	for end := time.Now().Add(hold); time.Now().Before(end); time.Sleep(cfg.PollInterval) {
		if term.Context().Err() != nil {
			t.Fatalf("term ended while left alone: %v", context.Cause(term.Context()))
		}
		pttl, err := rdb.PTTL(t.Context(), a.key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl <= 0 || pttl > cfg.LeaseTTL {
			t.Fatalf("lease PTTL %s, want in (0, %s]", pttl, cfg.LeaseTTL)
		}
		if v, _ := rdb.Get(t.Context(), a.key).Result(); v != term.Value {
			t.Fatalf("lease holds %q, want %q", v, term.Value)
		}
	}
	if err := <-bres; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("b's Campaign: %v, want context.DeadlineExceeded", err)
	}
	if a.Role() != "leader" {
		t.Errorf("Role %q, want leader", a.Role())
	}
}

// TestRun: fn runs in each term with the term's context; after a loss Run
// stands by, then calls fn again once the lease is free; it returns when
// its context ends, releasing the lease.
func TestRun(t *testing.T) {
	rdb := newClient(t, testenv.StartRedis(t).Addr())
	cfg := testConfig("a")
	l := newLease(t, cfg, rdb, prefix(t), nil)

	type call struct {
		ctx   context.Context
		value string // the lease key's value when fn began
	}
	calls := make(chan call)
	ended := make(chan error, 8) // context.Cause of each call's context
	fn := func(ctx context.Context) {
		v, _ := rdb.Get(context.Background(), l.key).Result()
		select {
		case calls <- call{ctx, v}:
		case <-ctx.Done():
		}
		<-ctx.Done()
		ended <- context.Cause(ctx)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		l.Run(ctx, fn)
	}()
	t.Cleanup(func() { cancel(); <-returned })
	recv := func(what string) call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(2 * time.Second):
			t.Fatalf("fn not called (%s)", what)
			return call{}
		}
	}
	endCause := func(what string, within time.Duration) error {
		t.Helper()
		select {
		case err := <-ended:
			return err
		case <-time.After(within):
			t.Fatalf("fn's context still live %s after %s", within, what)
			return nil
		}
	}

	first := recv("first term")
	if first.ctx.Err() != nil || !strings.HasSuffix(first.value, " a") {
		t.Fatalf("first call: context %v, lease %q", first.ctx.Err(), first.value)
	}
	other := "1 intruder"
	if err := rdb.Set(t.Context(), l.key, other, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if cause := endCause("the lease was overwritten", 2*cfg.RenewInterval+slack); !errors.Is(cause, ErrLost) {
		t.Errorf("first call ended by %v, want ErrLost", cause)
	}
	select {
	case c := <-calls:
		t.Fatalf("fn called again while another process holds the lease (%q)", c.value)
	case <-time.After(5 * cfg.PollInterval):
	}
	if v, _ := rdb.Get(t.Context(), l.key).Result(); v != other {
		t.Fatalf("lease holds %q after Run stepped down, want the other holder's %q", v, other)
	}

	if err := rdb.Del(t.Context(), l.key).Err(); err != nil {
		t.Fatal(err)
	}
	second := recv("after the lease was freed")
	if second.ctx.Err() != nil {
		t.Errorf("second call's context already done: %v", context.Cause(second.ctx))
	}
	if a, b := tokenOf(t, first.value), tokenOf(t, second.value); b <= a {
		t.Errorf("second term's token %d, want more than the first's %d", b, a)
	}

	cancel()
	if cause := endCause("Run's context ended", 2*time.Second); !errors.Is(cause, context.Canceled) {
		t.Errorf("second call ended by %v, want context.Canceled", cause)
	}
	select {
	case <-returned:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n, _ := rdb.Exists(t.Context(), l.key).Result(); n != 0 {
		t.Errorf("lease key still exists after Run returned")
	}
	if l.Role() != "standby" {
		t.Errorf("Role %q after Run returned, want standby", l.Role())
	}
}

func TestConfig(t *testing.T) {
	var def Config
	def.SetDefaults()
	if def.LeaseTTL != 3*time.Second || def.RenewInterval != time.Second ||
		def.PollInterval != 250*time.Millisecond || def.ID == "" {
		t.Errorf("defaults %+v", def)
	}
	partial := Config{LeaseTTL: 900 * time.Millisecond}
	partial.SetDefaults()
	if partial.RenewInterval != 300*time.Millisecond {
		t.Errorf("renew_interval %s with lease_ttl 900ms, want a third: 300ms", partial.RenewInterval)
	}

	cases := []struct {
		name      string
		edit      func(*Config)
		wantField string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"small timings", func(c *Config) { *c = testConfig("x") }, ""},
		{"renew half the ttl", func(c *Config) { c.RenewInterval = c.LeaseTTL / 2 }, ""},
		{"renew over half the ttl", func(c *Config) { c.RenewInterval = c.LeaseTTL/2 + time.Millisecond }, "ha.renew_interval"},
		{"renew negative", func(c *Config) { c.RenewInterval = -time.Second }, "ha.renew_interval"},
		{"poll equal to ttl", func(c *Config) { c.PollInterval = c.LeaseTTL }, ""},
		{"poll over ttl", func(c *Config) { c.PollInterval = c.LeaseTTL + time.Millisecond }, "ha.poll_interval"},
		{"poll negative", func(c *Config) { c.PollInterval = -time.Second }, "ha.poll_interval"},
		{"ttl 100ms", func(c *Config) {
			c.LeaseTTL, c.RenewInterval, c.PollInterval = 100*time.Millisecond, 50*time.Millisecond, 20*time.Millisecond
		}, ""},
		{"ttl under 100ms", func(c *Config) {
			c.LeaseTTL, c.RenewInterval, c.PollInterval = 99*time.Millisecond, 30*time.Millisecond, 20*time.Millisecond
		}, "ha.lease_ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := def
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.wantField == "" && err != nil:
				t.Errorf("Validate(%+v): %v, want nil", c, err)
			case tc.wantField != "" && err == nil:
				t.Errorf("Validate(%+v) = nil, want an error about %s", c, tc.wantField)
			case tc.wantField != "" && !strings.HasPrefix(err.Error(), tc.wantField+" "):
				t.Errorf("Validate(%+v) = %q, want it to name %s first", c, err, tc.wantField)
			}
		})
	}
}

// twoClients are the options of a's client in the link tests: the first
// as internal/daemon.RedisOptions builds them, the second honouring
// context deadlines on the socket as well.
var twoClients = []struct {
	name string
	opts redis.Options
}{
	{"daemon client options", redis.Options{}},
	{"client honouring context deadlines", redis.Options{ContextTimeoutEnabled: true}},
}

// linked is a lease "a" whose client reaches Redis through a link the
// test can break and a lease "b" of another process on a direct client,
// both with cfg's timings.
func linked(t *testing.T, opts redis.Options, cfg Config) (*link, *Lease, *Lease) {
	rs := testenv.StartRedis(t)
	p := prefix(t)
	cfg.ID = "a"
	ln := newLink(t, rs.Addr())
	opts.Addr = ln.addr()
	far := redis.NewClient(&opts)
	t.Cleanup(func() { far.Close() })
	a := newLease(t, cfg, far, p, nil)
	cfgB := cfg
	cfgB.ID = "b"
	b := newLease(t, cfgB, newClient(t, rs.Addr()), p, nil)
	return ln, a, b
}

// TestTermEndsWithItsLeaseBehindAPartition: a leader cut off from Redis
// by a network that drops packets. Its lease expires in Redis and a
// standby takes it; the old term must be over by then, or two processes
// lead at once (the jobs role, for one, is fenced by nothing but the
// term's context).
func TestTermEndsWithItsLeaseBehindAPartition(t *testing.T) {
	for _, tc := range twoClients {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("a")
			ln, a, b := linked(t, tc.opts, cfg)
			ta := campaign(t, a, 2*time.Second)
			// Runs before ta's Release: a renewal blocked in the link
			// would hold Release up.
			t.Cleanup(ln.close)
			ln.cut()
			tb := campaign(t, b, 5*cfg.LeaseTTL)
			tookOver := time.Now()
			// A correct term ended when its validity did, before the key
			// expired in Redis; the bound is slack for the scheduler.
			select {
			case <-ta.Context().Done():
			case <-time.After(2 * cfg.RenewInterval):
				waitDone(t, ta.Context(), 10*time.Second, "partitioned")
				t.Fatalf("a's term (token %d) was still live %s after b took the lease (token %d); "+
					"it ended %s after b took over, by %v",
					ta.Token, 2*cfg.RenewInterval, tb.Token, time.Since(tookOver).Round(time.Millisecond),
					context.Cause(ta.Context()))
			}
			if cause := context.Cause(ta.Context()); !errors.Is(cause, ErrExpired) {
				t.Errorf("a's term ended by %v, want ErrExpired", cause)
			}
		})
	}
}

// TestCampaignOverASlowLink: the answer to a's acquire arrives after the
// TTL, when the lease it took has expired in Redis and b holds it. Campaign
// may return no term, or a term that is over, but no live term.
func TestCampaignOverASlowLink(t *testing.T) {
	for _, tc := range twoClients {
		t.Run(tc.name, func(t *testing.T) {
			// The longest renew interval allowed: a term that outlives
			// its lease until the first renewal does so for long enough
			// to be seen.
			cfg := testConfig("a")
			cfg.RenewInterval = cfg.LeaseTTL / 2
			grace := cfg.RenewInterval / 3
			ln, a, b := linked(t, tc.opts, cfg)
			// Open a's connection and load the script while the link is
			// fast, so the slow acquire below is one round trip.
			campaign(t, a, 2*time.Second).Release()
			t.Cleanup(ln.close)
			delay := cfg.LeaseTTL + 100*time.Millisecond
			ln.delayReplies(delay)

			type result struct {
				term *Term
				err  error
			}
			got := make(chan result, 1)
			actx, acancel := context.WithTimeout(t.Context(), 3*delay)
			defer acancel()
			go func() {
				ta, err := a.Campaign(actx)
				got <- result{ta, err}
			}()
			// a's acquire reaches Redis at once; its answer is on the way.
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if v, _ := b.e.rdb.Get(t.Context(), a.key).Result(); strings.HasSuffix(v, " a") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("a's acquire did not reach Redis")
				}
			}
			tb := campaign(t, b, 5*cfg.LeaseTTL)
			r := <-got
			if r.term == nil {
				t.Logf("a has no term: %v", r.err)
				return
			}
			t.Cleanup(r.term.Release)
			if r.term.Token >= tb.Token {
				t.Fatalf("a's token %d is not older than b's %d", r.term.Token, tb.Token)
			}
			select {
			case <-r.term.Context().Done():
			case <-time.After(grace):
				waitDone(t, r.term.Context(), 10*time.Second, "slow link")
				t.Fatalf("Campaign returned a's term (token %d) %s after sending the acquire (TTL %s), "+
					"while b holds the lease (token %d); it was still live %s later and ended by %v",
					r.term.Token, delay, cfg.LeaseTTL, tb.Token, grace, context.Cause(r.term.Context()))
			}
		})
	}
}

// link forwards TCP connections to a server. Cut, it keeps every
// connection open but drops whatever either side sends (no FIN, no RST),
// like a network partition that loses packets; slowed, it holds each reply
// back for a while.
type link struct {
	ln     net.Listener
	target string
	isCut  atomic.Bool
	delay  atomic.Int64 // of replies, in ns
	wg     sync.WaitGroup
	once   sync.Once

	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func newLink(t *testing.T, target string) *link {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, target: target}
	t.Cleanup(l.close)
	l.wg.Go(l.accept)
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) cut() { l.isCut.Store(true) }

func (l *link) delayReplies(d time.Duration) { l.delay.Store(int64(d)) }

// close closes every connection, which ends any call blocked in the link.
func (l *link) close() {
	l.once.Do(func() {
		l.ln.Close()
		l.mu.Lock()
		l.closed = true
		for _, c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
}

func (l *link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		var up net.Conn
		if !l.isCut.Load() {
			if up, err = net.Dial("tcp", l.target); err != nil {
				c.Close()
				continue
			}
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			if up != nil {
				up.Close()
			}
			return
		}
		l.conns = append(l.conns, c)
		if up != nil {
			l.conns = append(l.conns, up)
			l.wg.Go(func() { l.pipe(up, c, true) })
		}
		l.mu.Unlock()
		l.wg.Go(func() { l.pipe(c, up, false) })
	}
}

// pipe copies src to dst (nil: nowhere) until src fails; once cut, it
// reads and drops.
func (l *link) pipe(src, dst net.Conn, replies bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && replies {
			time.Sleep(time.Duration(l.delay.Load()))
		}
		if n > 0 && dst != nil && !l.isCut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
