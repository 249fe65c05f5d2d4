// Package pipeline runs the CDC loop: choose where to start (checkpoint,
// snapshot, or configured position), stream the binlog into the sink, and
// start over from a snapshot when Redis lost its data.
package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/sink"
	"github.com/cenkalti/backoff/v4"
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
	log     zerolog.Logger
	phase   atomic.Value // string: starting, snapshot, streaming, stopped
	resets  prometheus.Counter
}

// New builds a pipeline. db reaches the same server as cfg (for checks,
// positions and snapshots).
func New(cfg binlog.Config, flavor string, db *sql.DB, applier *sink.Applier, snapshotChunk int, log zerolog.Logger, reg prometheus.Registerer) *Pipeline {
	p := &Pipeline{
		cfg:     cfg,
		chunk:   snapshotChunk,
		db:      db,
		applier: applier,
		source:  binlog.NewSource(cfg, flavor, applier.Rules().Tables(), log.With().Str("component", "binlog").Logger(), reg),
		log:     log,
		resets: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "redis_resets_total",
			Help: "Times Redis was found to have lost its data and was rebuilt from a snapshot."}),
	}
	if reg != nil {
		reg.MustRegister(p.resets)
	}
	p.phase.Store("starting")
	return p
}

// Ready returns nil when the pipeline streams and Redis accepts writes.
func (p *Pipeline) Ready() error {
	switch ph := p.phase.Load().(string); {
	case ph != "streaming":
		return fmt.Errorf("pipeline is %s", ph)
	case !p.source.Connected():
		return errors.New("binlog connection down")
	case !p.applier.Healthy():
		return errors.New("redis apply failing")
	}
	return nil
}

// Run streams until ctx is done (returns nil) or an error no retry can
// cure: a purged binlog, a rule that no longer fits its table.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.phase.Store("stopped")
	reset := false
	for {
		err := p.runOnce(ctx, reset)
		reset = errors.Is(err, sink.ErrRedisReset)
		if reset {
			p.resets.Inc()
			p.log.Warn().Msg("redis lost its data (checkpoint or snapshot journal gone): rebuilding from a snapshot")
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

func (p *Pipeline) runOnce(ctx context.Context, reset bool) error {
	p.phase.Store("starting")
	start, snapshot, expect, err := p.startPoint(ctx, reset)
	if err != nil || ctx.Err() != nil {
		return err
	}
	q := make(chan *binlog.Txn, queueTxns)
	srcCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var srcErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(q)
		if snapshot {
			p.phase.Store("snapshot")
			tables := p.applier.Rules().Stateful()
			p.log.Info().Strs("tables", tables).Msg("snapshot: loading ruled tables")
			t0 := time.Now()
			pos, err := binlog.Snapshot(srcCtx, p.db, tables, p.chunk, q)
			if err != nil {
				srcErr = err
				return
			}
			p.log.Info().Stringer("pos", pos).Dur("took", time.Since(t0)).Msg("snapshot sent; streaming from its position")
			start = binlog.Start{Pos: pos}
		}
		p.phase.Store("streaming")
		p.log.Info().Stringer("pos", start.Pos).Str("gtid", start.GTID).Msg("streaming binlog")
		srcErr = p.source.Run(srcCtx, start, q)
	}()
	err = p.applier.Run(ctx, q, expect)
	cancel()
	wg.Wait()
	if err != nil {
		return err
	}
	if srcErr != nil && ctx.Err() == nil {
		return srcErr
	}
	return nil
}

// startPoint decides where to read from. A stored checkpoint always wins;
// without one, mysql.start.from says: snapshot (from=checkpoint, when some
// rule keeps state), the current position, or the configured position/GTID.
// After Redis lost its data, rules that keep state always snapshot.
// Redis and MySQL being unreachable is retried until ctx is done.
func (p *Pipeline) startPoint(ctx context.Context, reset bool) (start binlog.Start, snapshot, expect bool, err error) {
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	err = backoff.Retry(func() error {
		cp, ok, err := p.applier.ReadCheckpoint(ctx)
		if err != nil {
			p.log.Warn().Err(err).Msg("reading checkpoint; retrying")
			return err
		}
		if ok {
			if p.cfg.Start.From != binlog.FromCheckpoint {
				p.log.Info().Str("start.from", p.cfg.Start.From).Msg("a checkpoint exists and wins over mysql.start.from")
			}
			start, expect = binlog.Start{Pos: cp.Pos}, true
			return nil
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
	}, backoff.WithContext(bo, ctx))
	return start, snapshot, expect, err
}
