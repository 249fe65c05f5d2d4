// Package pipeline runs the CDC loop: lead while this process holds the CDC
// lease (stand by otherwise), choose where to start (checkpoint, snapshot,
// or configured position), stream the binlog into the sink, start over
// from a snapshot when Redis lost its data, from the stored checkpoint
// when Redis went back in time, and from a snapshot after deleting the keys
// the rules own when it went back past what the binlog still has.
package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/sink"
	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// queueTxns bounds the transactions read ahead of the sink.
const queueTxns = 4096

// Pipeline connects a binlog source to a sink applier.
type Pipeline struct {
	cfg     binlog.Config
	chunk   int
	db      *sql.DB
	source  *binlog.Source
	applier *sink.Applier
	lease   *leader.Lease
	log     zerolog.Logger
	phase   atomic.Value          // string: standby, starting, resync, snapshot, streaming, stopped
	dbErr   atomic.Pointer[error] // last MySQL ping of a standby
	// dataErr: a standby's last look at Redis found the data incomplete
	// (no checkpoint yet, or a snapshot in progress): readers of Redis
	// would miss rows, whichever process writes them.
	dataErr atomic.Pointer[error]
	// snapTarget is the count of snapshot tables the sink must have done
	// (Applier.SnapshotTablesDone) before readers find the data in Redis.
	snapTarget atomic.Int64
	// sawCheckpoint: this process found or wrote a checkpoint in Redis
	// since the last data loss it counted. One missing later means Redis
	// lost its data, however that was noticed (a refused batch, or a lease
	// that vanished with the data and ended the term).
	sawCheckpoint atomic.Bool
	resets        prometheus.Counter
	rewinds       prometheus.Counter
	resyncs       prometheus.Counter
	snap          snapshotMetrics
	// rewoundAtStart: startPoint found the stored checkpoint older than
	// what this process applied (a rewind noticed through a lost lease);
	// read by lead, in the same goroutine.
	rewoundAtStart bool
	budget         atomic.Pointer[binlog.Budget] // the current run's read-ahead
}

// New builds a pipeline that leads under lease. db reaches the same server
// as cfg (for checks, positions and snapshots). log is the daemon's: lines
// are tagged component=pipeline, the binlog source's component=binlog.
func New(cfg binlog.Config, flavor string, db *sql.DB, applier *sink.Applier, lease *leader.Lease, snapshotChunk int, log zerolog.Logger, reg prometheus.Registerer) *Pipeline {
	p := &Pipeline{
		cfg:     cfg,
		chunk:   snapshotChunk,
		db:      db,
		applier: applier,
		lease:   lease,
		source:  binlog.NewSource(cfg, flavor, applier.Rules().Tables(), log.With().Str("component", "binlog").Logger(), reg),
		log:     log.With().Str("component", "pipeline").Logger(),
		resets: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "redis_resets_total",
			Help: "Times Redis was found to have lost its data and was rebuilt from a snapshot."}),
		rewinds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "redis_rewinds_total",
			Help: "Times Redis was found to have gone back in time (checkpoint older than applied) and the binlog was replayed from its checkpoint."}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "redis_resyncs_total",
			Help: "Times Redis went back to a checkpoint the binlog no longer has, and the keys the rules own were deleted and rebuilt from a snapshot."}),
	}
	if reg != nil {
		reg.MustRegister(p.resets, p.rewinds, p.resyncs)
	}
	p.snap = newSnapshotMetrics(reg)
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "cachesync", Name: "read_ahead_bytes",
			Help: "Estimated bytes of decoded rows read from MySQL and not yet in Redis (bounded by mysql.read_ahead_bytes)."},
			func() float64 {
				if b := p.budget.Load(); b != nil {
					return float64(b.Held())
				}
				return 0
			}))
	}
	p.phase.Store("starting")
	return p
}

// Ready returns nil when the pipeline streams and Redis accepts writes, or
// stands by with MySQL reachable: a standby is healthy.
func (p *Pipeline) Ready() error {
	switch ph := p.phase.Load().(string); {
	case ph == "standby" && p.lease.Role() == "leader":
		return errors.New("pipeline is starting") // took the lease just now
	case ph == "standby":
		if err := p.dbErr.Load(); err != nil && *err != nil {
			return fmt.Errorf("standby: mysql: %w", *err)
		}
		if err := p.dataErr.Load(); err != nil && *err != nil {
			return fmt.Errorf("standby: %w", *err)
		}
		return nil
	case ph != "streaming":
		return fmt.Errorf("pipeline is %s", ph)
	case p.applier.SnapshotTablesDone() < p.snapTarget.Load():
		return fmt.Errorf("snapshotting: %d table(s) not yet all in Redis", p.snapTarget.Load()-p.applier.SnapshotTablesDone())
	case !p.source.Connected():
		if err := p.source.LastError(); err != nil {
			return fmt.Errorf("binlog connection down: %w", err)
		}
		return errors.New("binlog connection down")
	case !p.applier.Healthy():
		return errors.New("redis apply failing")
	}
	return nil
}

// Role is "leader" or "standby".
func (p *Pipeline) Role() string { return p.lease.Role() }

// Run leads while this process holds the CDC lease and stands by
// otherwise, until ctx is done (returns nil) or an error no retry can
// cure: a purged binlog, a rule that no longer fits its table. A leader
// whose writes are refused by fencing, or whose lease is lost, steps down
// at once and stands by; SIGTERM (ctx) releases the lease.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.phase.Store("stopped")
	for {
		t, err := p.standby(ctx)
		if err != nil {
			return nil // ctx is done
		}
		err = p.lead(t.Context(), sink.Fence{Key: t.Key, Value: t.Value})
		t.Release()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, sink.ErrFenced), errors.Is(err, sink.ErrConflict):
			p.log.Warn().Err(err).Uint64("token", t.Token).Msg("another writer took over: stepping down")
		case err != nil:
			return err
		default:
			p.log.Warn().Err(context.Cause(t.Context())).Uint64("token", t.Token).Msg("lease ended: stepping down")
		}
	}
}

// standby campaigns for the lease, keeping the MySQL pool warm (and its
// state for Ready) meanwhile, and noting whether a checkpoint exists.
func (p *Pipeline) standby(ctx context.Context) (*leader.Term, error) {
	pingCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	// Ready says standby only with a first look at Redis behind it.
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	dataErr := p.dataComplete(c)
	cancel()
	p.dataErr.Store(&dataErr)
	p.phase.Store("standby")
	wg.Go(func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			c, cancel := context.WithTimeout(pingCtx, 2*time.Second)
			err := p.db.PingContext(c)
			dataErr := p.dataComplete(c)
			cancel()
			if pingCtx.Err() != nil {
				return
			}
			p.dbErr.Store(&err)
			p.dataErr.Store(&dataErr)
			select {
			case <-pingCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	return p.lease.Campaign(ctx)
}

// dataComplete returns nil when Redis holds what the rules derive from
// MySQL as of the stored checkpoint: a checkpoint exists and no snapshot is
// in progress (rules without state need neither: an empty cache is a
// consistent cache). It notes a checkpoint it sees.
func (p *Pipeline) dataComplete(ctx context.Context) error {
	_, ok, err := p.applier.ReadCheckpoint(ctx)
	if err == nil && ok {
		p.sawCheckpoint.Store(true)
	}
	switch {
	case len(p.applier.Rules().Stateful()) == 0:
		return nil
	case err != nil:
		return fmt.Errorf("redis: %w", err)
	case !ok:
		return errors.New("no checkpoint in redis yet: the leader has not begun its snapshot")
	}
	pending, _, err := p.applier.SnapshotProgress(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("redis: %w", err)
	case len(pending) > 0:
		return fmt.Errorf("snapshotting: the leader has %d table(s) left", len(pending))
	}
	return nil
}

// lead streams under fence until ctx is done (nil) or an error that
// restarting cannot cure here: starting over from a snapshot (Redis lost
// its data), from the stored checkpoint (Redis went back in time) and from
// a resync (it went back past the binlog) is done here.
func (p *Pipeline) lead(ctx context.Context, fence sink.Fence) error {
	snapshot, rewound := false, false
	if err := p.checkRedis(ctx); err != nil {
		return err
	}
	resync, err := p.resyncPending(ctx)
	if err != nil {
		return nil // ctx is done
	}
	for {
		if resync {
			err = p.resync(ctx, fence)
			resync = err != nil
			snapshot = err == nil
		}
		if !resync {
			err = p.runOnce(ctx, snapshot, rewound, fence)
			snapshot = false
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, sink.ErrRedisReset):
			snapshot = true
			p.sawCheckpoint.Store(false) // this loss is counted
			p.resets.Inc()
			p.log.Warn().Err(err).Msg("redis lost its data: rebuilding from a snapshot")
		case errors.Is(err, errSnapshotRequested):
			p.log.Info().Msg("snapshot requested: starting over from the checkpoint with the tables requested")
		case errors.Is(err, sink.ErrRewind):
			rewound = true
			p.rewinds.Inc()
			p.log.Warn().Err(err).Msg("redis went back in time: replaying the binlog from its stored checkpoint")
		case (rewound || p.rewoundAtStart) && errors.Is(err, binlog.ErrPurged):
			// Replay cannot bring the lost window back, and a snapshot
			// alone would leave the keys of rows deleted in it.
			resync, rewound, p.rewoundAtStart = true, false, false
			p.resyncs.Inc()
			p.log.Warn().Err(err).Msg("redis went back in time past the binlog: deleting the keys the rules own and rebuilding them from a snapshot")
		default:
			return err
		}
	}
}

// checkRedis refuses a Redis user that may not run what the daemon sends,
// a Redis whose eviction policy may drop cachesync's keys
// (sink.CheckRedis) and rules that write another source's keys (it
// registers this source's: sink.Applier.RegisterSource), retrying until
// Redis answers; nil when ctx is done.
func (p *Pipeline) checkRedis(ctx context.Context) error {
	err := retry(ctx, func() error {
		warnings, err := p.applier.CheckRedis(ctx)
		for _, w := range warnings {
			p.log.Warn().Msg(w)
		}
		if err == nil {
			err = p.applier.RegisterSource(ctx, true)
		}
		switch {
		case errors.Is(err, sink.ErrACL), errors.Is(err, sink.ErrEvictionPolicy), errors.Is(err, sink.ErrSourceOverlap):
			return backoff.Permanent(err)
		case err != nil:
			p.log.Warn().Err(err).Msg("checking redis; retrying")
		}
		return err
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// resyncPending reads the resync marker until Redis answers or ctx is done.
func (p *Pipeline) resyncPending(ctx context.Context) (pending bool, err error) {
	err = retry(ctx, func() error {
		pending, err = p.applier.ResyncPending(ctx)
		if err != nil {
			p.log.Warn().Err(err).Msg("reading the resync marker; retrying")
		}
		return err
	})
	if pending && err == nil {
		p.log.Warn().Msg("a resync was begun and not finished: finishing it")
	}
	return pending, err
}

// resync deletes the keys the rules own under fence, for a snapshot to
// rebuild them (see sink.PurgeOwned). It is retried until done, fenced, or
// ctx is done.
func (p *Pipeline) resync(ctx context.Context, fence sink.Fence) error {
	p.phase.Store("resync")
	return retry(ctx, func() error {
		t0 := time.Now()
		err := p.applier.BeginResync(ctx, fence)
		n := 0
		if err == nil {
			n, err = p.applier.PurgeOwned(ctx, fence)
		}
		// The marker goes with the snapshot's first batch (it writes the
		// checkpoint): until then a successor must purge and snapshot too,
		// whatever mysql.start.from says. Without stateful rules there is
		// no snapshot, and nothing more to do.
		if err == nil && len(p.applier.Rules().Stateful()) == 0 {
			err = p.applier.EndResync(ctx, fence)
		}
		switch {
		case errors.Is(err, sink.ErrFenced):
			return backoff.Permanent(err)
		case err != nil:
			p.log.Warn().Err(err).Msg("resync: retrying")
			return err
		}
		p.sawCheckpoint.Store(false) // deleted on purpose: not a loss
		p.log.Info().Int("keys", n).Dur("took", time.Since(t0)).Msg("resync: deleted the keys the rules own")
		return nil
	})
}

// retry calls op with back-off until it returns nil or an error wrapped in
// backoff.Permanent (returned unwrapped), or ctx is done (ctx's cause).
func retry(ctx context.Context, op func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 5 * time.Second
	_, err := backoff.Retry(ctx, func() (struct{}, error) { return struct{}{}, op() },
		backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0)) // not Retry's default of 15 minutes
	return err
}

func (p *Pipeline) runOnce(ctx context.Context, reset, rewound bool, fence sink.Fence) error {
	p.phase.Store("starting")
	p.rewoundAtStart = false
	p.snapTarget.Store(p.applier.SnapshotTablesDone())
	before := p.applier.Applied()
	defer func() {
		if a := p.applier.Applied(); a != nil && a != before {
			p.sawCheckpoint.Store(true) // this run wrote one
		}
	}()
	start, fresh, expect, err := p.startPoint(ctx, reset, rewound)
	if err != nil || ctx.Err() != nil {
		return err
	}
	// The snapshot to run beside the stream: all stateful tables when it
	// begins, else what the stored progress says is left.
	var first *binlog.Txn
	pending := map[string]string{}
	if fresh {
		tables := p.applier.Rules().Stateful()
		for _, t := range tables {
			pending[t] = ""
		}
		first = &binlog.Txn{Pos: start.Pos, Commit: time.Now(), Snapshot: &binlog.SnapshotStep{Start: tables}}
		p.log.Info().Strs("tables", tables).Stringer("pos", start.Pos).Msg("snapshot: beginning, beside the stream")
	} else if expect != nil {
		var requested, changed []string
		err := retry(ctx, func() (err error) {
			pending, requested, err = p.applier.SnapshotProgress(ctx)
			if err == nil {
				changed, err = p.applier.RulesChanged(ctx)
			}
			if err != nil {
				p.log.Warn().Err(err).Msg("reading snapshot progress; retrying")
			}
			return err
		})
		if err != nil {
			return nil // ctx is done
		}
		for _, t := range changed {
			if !slices.Contains(requested, t) {
				p.log.Info().Str("table", t).Msg("snapshot: the table's rules are not those of its last snapshot (added or changed since); snapshotting it again")
				pending[t] = ""
				requested = append(requested, t)
			}
		}
		if len(requested) > 0 { // begin them: the chunks' progress may not replace a request
			first = &binlog.Txn{Pos: start.Pos, Commit: time.Now(), Snapshot: &binlog.SnapshotStep{Start: requested}}
			p.log.Info().Strs("tables", requested).Msg("snapshot: beginning the tables requested")
		}
		if len(pending) > len(requested) {
			p.log.Info().Any("tables", pending).Msg("snapshot: resuming after the last chunk in Redis")
		}
	}
	keys := p.snapshotKeys(ctx, pending)
	if ctx.Err() != nil {
		return nil
	}
	p.snapTarget.Add(int64(len(pending)))

	budget := binlog.NewBudget(p.cfg.ReadAheadBytes)
	p.budget.Store(budget)
	p.source.SetBudget(budget)
	// Without a snapshot to merge, the stream goes to the sink directly:
	// a goroutine hand-off per transaction less.
	merging := len(pending) > 0 || first != nil
	q := make(chan *binlog.Txn, queueTxns)
	raw := q
	if merging {
		raw = make(chan *binlog.Txn, 64)
	}
	srcCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var srcErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(raw)
		p.phase.Store("streaming")
		p.log.Info().Stringer("pos", start.Pos).Str("gtid", start.GTID).Msg("streaming binlog")
		srcErr = p.source.Run(srcCtx, start, raw)
	})
	if merging {
		chunks := make(chan *binlog.Txn)
		wg.Go(func() {
			defer close(chunks)
			p.snapshot(srcCtx, pending, keys, budget, chunks)
		})
		wg.Go(func() {
			defer close(q)
			merge(srcCtx, p.snap, p.source, keys, start.Pos, first, raw, chunks, q)
		})
	}
	var requested atomic.Bool
	wg.Go(func() {
		if p.watchRequests(srcCtx) {
			requested.Store(true)
			cancel()
		}
	})
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	offset, err := binlog.ClockOffset(cctx, p.db)
	ccancel()
	if err != nil { // only batching while catching up depends on it
		p.log.Warn().Err(err).Msg("assuming MySQL's clock is this host's")
	}
	err = p.applier.Run(ctx, q, sink.Resume{Expect: expect, Fence: fence, ClockOffset: offset})
	cancel()
	wg.Wait()
	switch {
	case err != nil:
		return err
	case requested.Load() && ctx.Err() == nil:
		return errSnapshotRequested
	case srcErr != nil && ctx.Err() == nil:
		return srcErr
	}
	return nil
}

// startPoint decides where to read from. A stored checkpoint always wins;
// without one, mysql.start.from says: snapshot (from=checkpoint, when some
// rule keeps state), the current position, or the configured position/GTID.
// After Redis lost its data, rules that keep state always snapshot.
// Redis and MySQL being unreachable is retried until ctx is done.
// rewound says the caller already knows the stored checkpoint went back.
func (p *Pipeline) startPoint(ctx context.Context, reset, rewound bool) (start binlog.Start, snapshot bool, expect *sink.Checkpoint, err error) {
	err = retry(ctx, func() error {
		cp, ok, err := p.applier.ReadCheckpoint(ctx)
		if err != nil {
			p.log.Warn().Err(err).Msg("reading checkpoint; retrying")
			return err
		}
		if ok {
			p.sawCheckpoint.Store(true)
			if a := p.applier.Applied(); a != nil && cp.Version < a.Version && !rewound {
				p.rewoundAtStart = true
				// Noticed by a lost lease before any batch was refused.
				p.rewinds.Inc()
				p.log.Warn().Stringer("stored", cp.Pos).Stringer("applied", a.Pos).Msg("redis went back in time: replaying the binlog from its stored checkpoint")
			}
			if p.cfg.Start.From != binlog.FromCheckpoint {
				p.log.Info().Str("start.from", p.cfg.Start.From).Msg("a checkpoint exists and wins over mysql.start.from")
			}
			start, expect = binlog.Start{Pos: cp.Pos}, &cp
			return nil
		}
		if !reset && p.sawCheckpoint.Load() {
			reset = true
			p.sawCheckpoint.Store(false) // this loss is counted
			p.resets.Inc()
			p.log.Warn().Msg("redis lost its data: the checkpoint this process saw is gone; rebuilding from a snapshot")
		}
		stateful := len(p.applier.Rules().Stateful()) > 0
		if stateful && (reset || p.cfg.Start.From == binlog.FromCheckpoint) {
			snapshot = true
			n, err := p.applier.DiscardUnfinishedSnapshot(ctx)
			if err != nil {
				p.log.Warn().Err(err).Msg("discarding an unfinished snapshot; retrying")
				return err
			}
			if n > 0 {
				p.log.Info().Int("keys", n).Msg("deleted the keys of an unfinished snapshot")
			}
			pos, err := binlog.CurrentPosition(ctx, p.db)
			if err != nil {
				p.log.Warn().Err(err).Msg("reading current binlog position; retrying")
				return err
			}
			start = binlog.Start{Pos: pos}
			return nil
		}
		switch p.cfg.Start.From {
		case binlog.FromPosition:
			pos, err := binlog.ParsePosition(p.cfg.Start.Position)
			start = binlog.Start{Pos: pos}
			return backoff.Permanent(err)
		case binlog.FromGTID:
			start = binlog.Start{GTID: p.cfg.Start.GTID}
			return nil
		}
		pos, err := binlog.CurrentPosition(ctx, p.db)
		if err != nil {
			p.log.Warn().Err(err).Msg("reading current binlog position; retrying")
			return err
		}
		start = binlog.Start{Pos: pos}
		return nil
	})
	return start, snapshot, expect, err
}
