// Package leader elects one process among several by a lease in Redis that
// carries a fencing token.
//
// A lease N is the key keyspace.Leader(N) holding "<token> <holder>" with a
// TTL that its holder renews. The token is new at every acquisition and
// larger than every token handed out before (see acquire.lua), so the
// holder can pass its lease value with every write and the write is
// refused once anyone else took the lease: it is the token, not a clock,
// that keeps a paused or partitioned old holder from writing. Timing only
// decides how soon a standby takes over.
package leader

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

//go:embed acquire.lua
var acquireLua string

var (
	acquireScript = redis.NewScript(acquireLua)
	renewScript   = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
)

// Reasons a term ends, as context.Cause of Term.Context.
var (
	// ErrLost: a renewal found the lease gone or held by someone else.
	ErrLost = errors.New("lease lost: taken over or expired")
	// ErrExpired: no renewal succeeded within the TTL (Redis unreachable).
	ErrExpired = errors.New("lease expired: could not renew it in time")
	// ErrReleased: Release was called.
	ErrReleased = errors.New("lease released")
)

// Elector hands out the leases of one process. Its leases share metrics:
// cachesync_leader{lease}, cachesync_leader_token{lease} and
// cachesync_leader_transitions_total{lease,event}.
type Elector struct {
	cfg    Config
	rdb    redis.UniversalClient
	ks     keyspace.Keyspace
	log    zerolog.Logger
	leader *prometheus.GaugeVec
	token  *prometheus.GaugeVec
	events *prometheus.CounterVec
}

// New returns an Elector; cfg has its defaults and is valid.
func New(cfg Config, rdb redis.UniversalClient, ks keyspace.Keyspace, log zerolog.Logger, reg prometheus.Registerer) *Elector {
	e := &Elector{cfg: cfg, rdb: rdb, ks: ks, log: log,
		leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "cachesync", Name: "leader",
			Help: "1 while this process holds the lease, 0 while it is a standby."}, []string{"lease"}),
		token: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "cachesync", Name: "leader_token",
			Help: "Fencing token of this process's current or last term."}, []string{"lease"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "cachesync", Name: "leader_transitions_total",
			Help: "Lease transitions of this process: acquired, released, lost, expired."}, []string{"lease", "event"}),
	}
	if reg != nil {
		reg.MustRegister(e.leader, e.token, e.events)
	}
	return e
}

// ID is this process's holder id.
func (e *Elector) ID() string { return e.cfg.ID }

// Lease returns the lease called name ("cdc", "jobs").
func (e *Elector) Lease(name string) *Lease {
	e.leader.WithLabelValues(name).Set(0)
	return &Lease{e: e, name: name, key: e.ks.Leader(name), fence: e.ks.Fence(name),
		log: e.log.With().Str("lease", name).Logger()}
}

// Lease is one named lease. Campaign and Run may be called by one
// goroutine at a time.
type Lease struct {
	e     *Elector
	name  string
	key   string
	fence string
	log   zerolog.Logger

	mu  sync.Mutex
	cur *Term // nil while standby
}

// Role is "leader" while this process holds the lease, else "standby".
func (l *Lease) Role() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil && l.cur.ctx.Err() == nil {
		return "leader"
	}
	return "standby"
}

// Campaign blocks until this process holds the lease, trying every poll
// interval, and returns the term; or returns ctx's error when ctx is done.
// A failing Redis call is logged (once per outage) and tried again.
func (l *Lease) Campaign(ctx context.Context) (*Term, error) {
	tick := time.NewTicker(l.e.cfg.PollInterval)
	defer tick.Stop()
	var lastErr, lastHolder string
	for {
		t, holder, err := l.try(ctx, acquireScript)
		if t != nil {
			return t, nil
		}
		switch {
		case err != nil && ctx.Err() == nil && err.Error() != lastErr:
			lastErr = err.Error()
			l.log.Warn().Err(err).Msg("cannot reach redis to take the lease; retrying")
		case err == nil && holder != lastHolder:
			lastErr, lastHolder = "", holder
			l.log.Info().Str("holder", holder).Msg("standby: another process holds the lease")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// try takes the lease with script (acquire.lua, or seizeScript) if it is
// free; else it returns the holder's value.
func (l *Lease) try(ctx context.Context, script *redis.Script) (*Term, string, error) {
	cfg := l.e.cfg
	callCtx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL)
	defer cancel()
	sent := time.Now()
	res, err := script.Run(callCtx, l.e.rdb, []string{l.key, l.fence}, cfg.ID, cfg.LeaseTTL.Milliseconds()).Slice()
	if err != nil {
		return nil, "", fmt.Errorf("lease %s: %w", l.name, err)
	}
	if len(res) != 2 {
		return nil, "", fmt.Errorf("lease %s: acquire answered %v", l.name, res)
	}
	value, _ := res[1].(string)
	if n, _ := res[0].(int64); n != 1 {
		return nil, value, nil
	}
	tok, err := strconv.ParseUint(strings.SplitN(value, " ", 2)[0], 10, 64)
	if err != nil {
		return nil, "", fmt.Errorf("lease %s: bad token in %q", l.name, value)
	}
	validUntil := sent.Add(cfg.LeaseTTL)
	if !time.Now().Before(validUntil) {
		// The answer came after the TTL: another process may hold the
		// lease by now. Give it back if it is still ours.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = releaseScript.Run(rctx, l.e.rdb, []string{l.key}, value).Err()
		rcancel()
		return nil, "", fmt.Errorf("lease %s: taken, but the answer came %s after asking, past the TTL", l.name, time.Since(sent).Round(time.Millisecond))
	}
	t := &Term{Token: tok, Key: l.key, Value: value, l: l, done: make(chan struct{})}
	t.ctx, t.cancel = context.WithCancelCause(ctx)
	l.mu.Lock()
	l.cur = t
	l.mu.Unlock()
	l.e.leader.WithLabelValues(l.name).Set(1)
	l.e.token.WithLabelValues(l.name).Set(float64(tok))
	l.e.events.WithLabelValues(l.name, "acquired").Inc()
	l.log.Info().Uint64("token", tok).Str("holder", cfg.ID).Msg("took the lease: leading")
	go t.keep(validUntil)
	return t, value, nil
}

// Run calls fn in every term this process wins, with the term's context,
// until ctx is done; the lease is released each time fn returns. fn must
// return soon after its context ends.
func (l *Lease) Run(ctx context.Context, fn func(ctx context.Context)) {
	for {
		t, err := l.Campaign(ctx)
		if err != nil {
			return
		}
		fn(t.Context())
		t.Release()
	}
}

// Term is one tenure of this process as the lease's holder.
type Term struct {
	// Token is the fencing token of this term.
	Token uint64
	// Key and Value: a write is fenced by checking, in the same script,
	// that Key still holds Value.
	Key, Value string

	l      *Lease
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // the renewing goroutine returned
	ended  atomic.Bool   // by end or Release
	once   sync.Once
}

// Context ends when the term does: the lease was lost, expired or
// released, or the context given to Campaign ended. context.Cause tells
// which.
func (t *Term) Context() context.Context { return t.ctx }

// keep renews the lease until the term ends. The lease is valid until the
// TTL after a renewal was sent; a timer ends the term then, whether or not
// a renewal call is still waiting for an answer (a partition can hold it
// for the client's read timeout). A renewal that finds another value ends
// the term at once.
func (t *Term) keep(validUntil time.Time) {
	defer close(t.done)
	cfg := t.l.e.cfg
	expire := time.AfterFunc(time.Until(validUntil), func() { t.end(ErrExpired, "expired") })
	defer expire.Stop()
	tick := time.NewTicker(cfg.RenewInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithDeadline(t.ctx, validUntil)
		n, err := renewScript.Run(ctx, t.l.e.rdb, []string{t.Key}, t.Value, cfg.LeaseTTL.Milliseconds()).Int()
		cancel()
		switch {
		case t.ctx.Err() != nil:
			return
		case err == nil && n == 1:
			validUntil = sent.Add(cfg.LeaseTTL)
			if !expire.Stop() {
				return // expired while the renewal was on its way
			}
			expire.Reset(time.Until(validUntil))
		case err == nil:
			t.end(ErrLost, "lost")
			return
		default:
			t.l.log.Warn().Err(err).Time("valid_until", validUntil).Msg("renewing the lease failed; retrying")
		}
	}
}

// end ends the term for cause, once; a released term is not ended again.
func (t *Term) end(cause error, event string) {
	if !t.ended.CompareAndSwap(false, true) {
		return
	}
	t.l.log.Warn().Uint64("token", t.Token).Str("reason", cause.Error()).Msg("stepping down: no longer the leader")
	t.l.e.events.WithLabelValues(t.l.name, event).Inc()
	t.l.e.leader.WithLabelValues(t.l.name).Set(0)
	t.cancel(cause)
}

// Release ends the term and deletes the lease if it still holds this
// term's value, so a standby takes over at its next poll instead of after
// the TTL. It waits for the renewing goroutine; calling it again does
// nothing.
func (t *Term) Release() {
	t.once.Do(func() {
		t.ended.Store(true)
		t.cancel(ErrReleased)
		<-t.done
		t.l.mu.Lock()
		if t.l.cur == t {
			t.l.cur = nil
		}
		t.l.mu.Unlock()
		t.l.e.leader.WithLabelValues(t.l.name).Set(0)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, err := releaseScript.Run(ctx, t.l.e.rdb, []string{t.Key}, t.Value).Int()
		if err != nil {
			t.l.log.Warn().Err(err).Msg("could not release the lease; a standby takes over when it expires")
			return
		}
		if n == 0 {
			return // someone else's by now, or expired
		}
		t.l.e.events.WithLabelValues(t.l.name, "released").Inc()
		t.l.log.Info().Uint64("token", t.Token).Msg("released the lease")
	})
}

// Standalone is the CDC lease "cdc" with default timings and no metrics,
// for programs that run one pipeline on their own (benchmarks, harness).
func Standalone(rdb redis.UniversalClient, keyPrefix string) *Lease {
	var cfg Config
	cfg.SetDefaults()
	return New(cfg, rdb, keyspace.Keyspace{Prefix: keyPrefix}, zerolog.Nop(), nil).Lease("cdc")
}
