package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

type ruleSet struct {
	name  string
	rules []sink.RuleConfig
}

var ruleSets = []ruleSet{
	{"invalidate", []sink.RuleConfig{{Table: "bench.t", Kind: sink.KindInvalidate, Keys: []string{"t:{id}"}}}},
	{"rewrite json", []sink.RuleConfig{{Table: "bench.t", Kind: sink.KindRewrite, Key: "tj:{id}"}}},
	{"all four kinds", []sink.RuleConfig{
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

// applyRate replays start..end through cachesync into an empty Redis and
// returns rows/s until the checkpoint reached end.
func (e *env) applyRate(ctx context.Context, rs ruleSet, start, end binlog.Position, rows int) (float64, error) {
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return 0, err
	}
	p, a, err := e.newPipeline(rs.rules, binlog.StartConfig{From: binlog.FromPosition, Position: start.String()})
	if err != nil {
		return 0, err
	}
	endVer, _ := end.Version()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- p.Run(ctx) }()
	for {
		if cp := a.Applied(); cp != nil && cp.Version >= endVer {
			break
		}
		select {
		case err := <-done:
			return 0, fmt.Errorf("pipeline stopped early: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Since(t0) > 5*time.Minute {
			return 0, fmt.Errorf("not caught up after 5 minutes")
		}
	}
	took := time.Since(t0)
	cancel()
	<-done
	return float64(rows) / took.Seconds(), nil
}

// latency offers rate single-row insert transactions per second for d and
// measures COMMIT returned → invalidation message received.
func (e *env) latency(ctx context.Context, rate int, d time.Duration) (latencyResult, error) {
	var res latencyResult
	if _, err := e.db.ExecContext(ctx, "CREATE TABLE bench.lat (id INT PRIMARY KEY, at BIGINT NOT NULL)"); err != nil {
		return res, err
	}
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return res, err
	}
	p, _, err := e.newPipeline([]sink.RuleConfig{{Table: "bench.lat", Kind: sink.KindInvalidate, Keys: []string{"lat:{id}"}}},
		binlog.StartConfig{From: binlog.FromCurrent})
	if err != nil {
		return res, err
	}
	sub := e.rdb.Subscribe(ctx, "cachesync:invalidations")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for p.Ready() != nil {
		time.Sleep(10 * time.Millisecond)
	}

	var mu sync.Mutex
	committed := map[int]time.Time{}
	received := map[int]time.Time{}
	go func() {
		for m := range sub.Channel() {
			now := time.Now()
			var msg struct{ Keys []string }
			if json.Unmarshal([]byte(m.Payload), &msg) != nil {
				continue
			}
			mu.Lock()
			for _, k := range msg.Keys {
				if id, err := strconv.Atoi(strings.TrimPrefix(k, "lat:")); err == nil {
					received[id] = now
				}
			}
			mu.Unlock()
		}
	}()
	const writers = 4
	total := int(float64(rate) * d.Seconds())
	interval := time.Duration(float64(time.Second) * writers / float64(rate))
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	t0 := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i, k := w, 0; i < total; i, k = i+writers, k+1 {
				time.Sleep(time.Until(t0.Add(time.Duration(k) * interval)))
				if _, err := e.db.ExecContext(ctx, "INSERT INTO bench.lat VALUES (?, ?)", i, time.Now().UnixNano()); err != nil {
					errs <- err
					return
				}
				at := time.Now()
				mu.Lock()
				committed[i] = at
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	res.offered = float64(total) / time.Since(t0).Seconds()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(received)
		mu.Unlock()
		if n >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var lats []time.Duration
	for id, c := range committed {
		if r, ok := received[id]; ok {
			// The message can beat the client's view of its own COMMIT.
			lats = append(lats, max(0, r.Sub(c)))
		}
	}
	if len(lats) < total {
		return res, fmt.Errorf("latency run: %d of %d transactions never announced", total-len(lats), total)
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	res.n = len(lats)
	res.p50 = lats[len(lats)/2]
	res.p99 = lats[len(lats)*99/100]
	res.max = lats[len(lats)-1]
	return res, nil
}

type applyResult struct {
	name string
	rate float64
}

type latencyResult struct {
	n             int
	offered       float64
	p50, p99, max time.Duration
}

type results struct {
	rows    int
	raw     float64
	apply   []applyResult
	latency latencyResult
}

func (r results) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Throughput over the same binlog range: %d single-row UPDATE events, 10 per transaction (best of 3).\n\n", r.rows)
	fmt.Fprintf(&b, "| pipeline | rows/s | vs raw parse |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| raw go-mysql BinlogSyncer parse (baseline) | %.0f | 1.00 |\n", r.raw)
	for _, a := range r.apply {
		fmt.Fprintf(&b, "| cachesync end-to-end, %s rules | %.0f | %.2f |\n", a.name, a.rate, a.rate/r.raw)
	}
	l := r.latency
	fmt.Fprintf(&b, "\nCommit → applied latency (COMMIT returned → invalidation message received), %d single-row transactions at %.0f txn/s offered:\n\n", l.n, l.offered)
	fmt.Fprintf(&b, "| p50 | p99 | max |\n|---:|---:|---:|\n| %s | %s | %s |\n", ms(l.p50), ms(l.p99), ms(l.max))
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
