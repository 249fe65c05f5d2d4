package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

type ruleSet struct {
	id, name string
	checked  bool // tj:{id} holds the row as JSON afterwards
	rules    []sink.RuleConfig
}

var ruleSets = []ruleSet{
	{"invalidate", "invalidate", false, []sink.RuleConfig{{Table: "bench.t", Kind: sink.KindInvalidate, Keys: []string{"t:{id}"}}}},
	{"rewrite", "rewrite json", true, []sink.RuleConfig{{Table: "bench.t", Kind: sink.KindRewrite, Key: "tj:{id}"}}},
	{"all4", "all four kinds", true, []sink.RuleConfig{
		{Table: "bench.t", Kind: sink.KindInvalidate, Keys: []string{"t:{id}"}},
		{Table: "bench.t", Kind: sink.KindRewrite, Key: "tj:{id}"},
		{Table: "bench.t", Kind: sink.KindMirror, Key: "tv:{id}", Column: "v"},
		{Table: "bench.t", Kind: sink.KindMember, Key: "odd", Member: "{id}", When: &sink.Condition{Column: "price", In: []string{"1.50", "3.50"}}},
	}},
}

// newPipeline builds an in-process pipeline the way the daemon does, from
// e's MariaDB into rdb with sc (a *redis.ClusterClient needs sc.Cluster).
// The lease is the daemon's, in sc's keyspace (each source has its own).
func (e *env) newPipeline(sc sink.Config, rdb redis.UniversalClient, start binlog.StartConfig) (*pipeline.Pipeline, *sink.Applier, error) {
	bc := binlog.Config{Addr: e.my.Addr(), User: "root", Flavor: "mariadb", ServerID: 9100, Start: start}
	bc.SetDefaults()
	sc.SetDefaults()
	if err := bc.Validate(); err != nil {
		return nil, nil, err
	}
	if err := sc.Validate(); err != nil {
		return nil, nil, err
	}
	a, err := sink.NewApplier(sc, rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		return nil, nil, err
	}
	var lc leader.Config
	lc.SetDefaults()
	lease := leader.New(lc, rdb, sc.Keyspace(), zerolog.Nop(), nil).Lease(pipeline.LeaseName)
	return pipeline.New(bc, "mariadb", e.db, a, lease, sc.BatchChanges, zerolog.Nop(), prometheus.NewRegistry()), a, nil
}

// applyRate replays w's binlog range through an in-process cachesync
// pipeline into e's Redis (see applyAll).
func (e *env) applyRate(ctx context.Context, rs ruleSet, w *workload, win *window) (int, error) {
	return applyAll(ctx, []replay{{src: e, w: w, sc: sink.Config{Rules: rs.rules}, rdb: e.rdb}}, win)
}

// replay is one pipeline of a measured run: the workload it replays from
// its MariaDB, and the sink configuration and client it applies with.
type replay struct {
	src *env
	w   *workload
	sc  sink.Config
	rdb redis.UniversalClient
}

// applyAll runs the replays' pipelines at once, each from its workload's
// start (Redis is empty: the caller flushed it), until every checkpoint
// reached its workload's end, and returns the row changes of all. The
// window holds the pipelines' start (reading the checkpoint, loading the
// script) and a 2 ms poll of the checkpoints; nothing else runs in this
// process meanwhile.
func applyAll(ctx context.Context, rps []replay, win *window) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	appliers, ends, rows := make([]*sink.Applier, len(rps)), make([]uint64, len(rps)), 0
	var pipes []*pipeline.Pipeline
	for i, r := range rps {
		p, a, err := r.src.newPipeline(r.sc, r.rdb, binlog.StartConfig{From: binlog.FromPosition, Position: r.w.start.String()})
		if err != nil {
			return 0, err
		}
		pipes, appliers[i] = append(pipes, p), a
		ends[i], _ = r.w.end.Version()
		rows += r.w.rows
	}
	done := make(chan error, len(pipes))
	defer func() { // every pipeline has stopped when applyAll returns
		cancel()
		for range pipes {
			<-done
		}
	}()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	win.begin()
	for _, p := range pipes {
		go func() { done <- p.Run(ctx) }()
	}
	for !caughtUp(appliers, ends) {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			return 0, fmt.Errorf("pipeline stopped early: %v", err)
		case <-tick.C:
		}
		if time.Since(win.t0) > 5*time.Minute {
			return 0, fmt.Errorf("not caught up after 5 minutes")
		}
	}
	win.finish()
	return rows, nil
}

// caughtUp reports whether each applier's checkpoint reached its end.
func caughtUp(as []*sink.Applier, ends []uint64) bool {
	for i, a := range as {
		if cp := a.Applied(); cp == nil || cp.Version < ends[i] {
			return false
		}
	}
	return true
}
