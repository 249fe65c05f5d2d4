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

// newPipeline builds an in-process pipeline the way the daemon does.
func (e *env) newPipeline(rules []sink.RuleConfig, start binlog.StartConfig) (*pipeline.Pipeline, *sink.Applier, error) {
	bc := binlog.Config{Addr: e.my.Addr(), User: "root", Flavor: "mariadb", ServerID: 9100, Start: start}
	bc.SetDefaults()
	sc := sink.Config{Rules: rules}
	sc.SetDefaults()
	if err := bc.Validate(); err != nil {
		return nil, nil, err
	}
	if err := sc.Validate(); err != nil {
		return nil, nil, err
	}
	a, err := sink.NewApplier(sc, e.rdb, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		return nil, nil, err
	}
	return pipeline.New(bc, "mariadb", e.db, a, leader.Standalone(e.rdb, sc.KeyPrefix), sc.BatchChanges, zerolog.Nop(), prometheus.NewRegistry()), a, nil
}

// applyRate replays w's binlog range through an in-process cachesync
// pipeline (Redis is empty: the caller flushed it) until its checkpoint
// reached the range's end. The window holds the pipeline's start (reading
// the checkpoint, loading the script) and a 2 ms poll of the checkpoint;
// nothing else runs in this process meanwhile.
func (e *env) applyRate(ctx context.Context, rs ruleSet, w *workload, win *window) (int, error) {
	p, a, err := e.newPipeline(rs.rules, binlog.StartConfig{From: binlog.FromPosition, Position: w.start.String()})
	if err != nil {
		return 0, err
	}
	endVer, _ := w.end.Version()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	win.begin()
	go func() { done <- p.Run(ctx) }()
	for {
		if cp := a.Applied(); cp != nil && cp.Version >= endVer {
			break
		}
		select {
		case err := <-done:
			return 0, fmt.Errorf("pipeline stopped early: %v", err)
		case <-tick.C:
		}
		if time.Since(win.t0) > 5*time.Minute {
			return 0, fmt.Errorf("not caught up after 5 minutes")
		}
	}
	win.finish()
	cancel()
	<-done
	return w.rows, nil
}
