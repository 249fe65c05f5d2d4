package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// clusterBench measures cachesync's apply rate on a standalone Redis
// against a 3-master Redis Cluster, and two sources applying at once on
// the cluster, all on this box in one run. The "single" workload is
// recorded once on each of two private MariaDB servers; each setup
// replays it with the rewrite json rule through in-process pipelines into
// a flushed Redis, -runs times round-robin, and every key is checked
// against MySQL's rows after each run.
func clusterBench(args []string) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	var o clusterOptions
	fs.IntVar(&o.rows, "rows", 200_000, "row changes in the workload (single-row UPDATEs, 10 per transaction), on each MariaDB")
	fs.IntVar(&o.runs, "runs", 3, "runs of each setup (the median is reported)")
	fs.StringVar(&o.out, "out", "", "also write the Markdown table to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.rows < 10 || o.runs < 1 {
		return fmt.Errorf("-rows %d, -runs %d: want at least 10 and 1", o.rows, o.runs)
	}
	ctx := context.Background()
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintln(os.Stderr, "starting a second private MariaDB and a Redis Cluster…")
	e2, stop2, err := startMariaDB()
	if err != nil {
		return err
	}
	defer stop2()
	c, err := testenv.NewRedisCluster()
	if err != nil {
		return err
	}
	defer c.Close()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 64, ClusterStateReloadInterval: time.Second})
	defer cc.Close()

	var ws [2]*workload
	for i, src := range []*env{e, e2} {
		if err := src.createTable(ctx); err != nil {
			return err
		}
		if ws[i], err = src.write(ctx, 0, o.rows); err != nil { // workloadKinds[0]: "single"
			return fmt.Errorf("workload on MariaDB %d: %w", i+1, err)
		}
		fmt.Fprintf(os.Stderr, "workload on MariaDB %d: %d row changes in %s, binlog %s → %s\n",
			i+1, ws[i].rows, ws[i].took.Round(time.Millisecond), ws[i].start, ws[i].end)
	}
	var nodes []int
	for _, n := range c.Nodes() {
		nodes = append(nodes, n.PID())
	}
	setups := []clusterSetup{
		{name: "standalone Redis, one source", rdb: e.rdb, redisPIDs: []int{e.rd.PID()}, mariadbPIDs: []int{e.my.PID()},
			replays: []replay{{e, ws[0], sink.Config{Rules: rewriteRules("")}, e.rdb}}, keyPrefixes: []string{""}},
		{name: "Redis Cluster, one source", rdb: cc, redisPIDs: nodes, mariadbPIDs: []int{e.my.PID()},
			replays: []replay{{e, ws[0], sink.Config{Cluster: true, Source: "main", Rules: rewriteRules("")}, cc}}, keyPrefixes: []string{""}},
		{name: "Redis Cluster, two sources at once", rdb: cc, redisPIDs: nodes, mariadbPIDs: []int{e.my.PID(), e2.my.PID()},
			replays: []replay{
				{e, ws[0], sink.Config{Cluster: true, Source: "a", Rules: rewriteRules("a:")}, cc},
				{e2, ws[1], sink.Config{Cluster: true, Source: "b", Rules: rewriteRules("b:")}, cc},
			}, keyPrefixes: []string{"a:", "b:"}},
	}
	runs := make([][]runResult, len(setups))
	for n := range o.runs {
		for si, s := range setups {
			r, err := s.measure(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Fprintf(os.Stderr, "run %d, %s: %.0f rows/s; CPU µs/row: this process %.2f, Redis %.2f, MariaDB %.2f; load average %.2f → %.2f\n",
				n+1, s.name, r.rate(), r.perRow(r.use.self), r.perRow(r.use.redis), r.perRow(r.use.mariadb), r.load0, r.load1)
			runs[si] = append(runs[si], r)
		}
	}
	return emit(clusterMarkdown(o, ws[0].rows, setups, runs), o.out)
}

type clusterOptions struct {
	rows, runs int
	out        string
}

// rewriteRules is the rule set "rewrite" with its keys behind keyPrefix:
// two sources must not write the same keys (sink.ErrSourceOverlap).
func rewriteRules(keyPrefix string) []sink.RuleConfig {
	i := slices.IndexFunc(ruleSets, func(rs ruleSet) bool { return rs.id == "rewrite" })
	rules := slices.Clone(ruleSets[i].rules)
	for j := range rules {
		rules[j].Key = keyPrefix + rules[j].Key
	}
	return rules
}

// clusterSetup is one way of applying the workload: the pipelines run at
// once into rdb, and the server processes whose CPU time counts.
type clusterSetup struct {
	name        string
	rdb         redis.UniversalClient
	replays     []replay
	keyPrefixes []string // of each replay's rule, for checkRows
	redisPIDs   []int
	mariadbPIDs []int
}

// measure runs s once into a flushed Redis and checks every key it must
// leave.
func (s clusterSetup) measure(ctx context.Context) (runResult, error) {
	if err := flushAll(ctx, s.rdb); err != nil {
		return runResult{}, err
	}
	win := &window{redisPIDs: s.redisPIDs, mariadbPIDs: s.mariadbPIDs}
	n, err := applyAll(ctx, s.replays, win)
	if err == nil {
		err = win.err
	}
	if err != nil {
		return runResult{}, err
	}
	for i, r := range s.replays {
		if err := checkRows(ctx, r.rdb, s.keyPrefixes[i], r.w); err != nil {
			return runResult{}, fmt.Errorf("source %q: %w", r.sc.Source, err)
		}
	}
	return runResult{rows: n, took: win.took, use: win.use, load0: win.load0, load1: win.load1}, nil
}

// flushAll empties rdb: on a cluster, every master.
func flushAll(ctx context.Context, rdb redis.UniversalClient) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
	}
	return rdb.FlushAll(ctx).Err()
}

func clusterMarkdown(o clusterOptions, rows int, setups []clusterSetup, runs [][]runResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d row changes to a %d-row table, recorded once on each of two private MariaDB servers and replayed by in-process cachesync pipelines (rewrite json rule) into an empty Redis; every key checked against MySQL after each run; %d runs of each setup, round-robin, median reported; %d CPUs shared by both MariaDB servers, the standalone Redis, the six cluster nodes and this process. "+
		"The cluster has 3 masters and 3 replicas: a batch is one script per hash slot it writes, then the source's checkpoint script. Two sources: one pipeline per MariaDB at once, sources \"a\" and \"b\", keys a:tj:{id} and b:tj:{id}; rows/s counts both. "+
		"CPU µs/row = the process's user + system time over the run (getrusage for this process, which runs only the measured pipelines; /proc/PID/stat for the servers) divided by the row changes; Redis is the sum of the setup's nodes (all six on the cluster, replicas included), MariaDB of the servers replayed.\n\n",
		workloadKinds[0].name, rows, tableKeys, o.runs, runtime.NumCPU())
	sums := make([]summary, len(setups))
	for i := range setups {
		sums[i] = summarize(runs[i])
	}
	rate := func(s summary) float64 { return s.rate }
	b.WriteString("| setup | rows/s | × standalone | × cluster, one source | CPU µs/row: this process | Redis | MariaDB | process + Redis | load average, start → end of each run |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for i, s := range setups {
		var loads []string
		for _, r := range runs[i] {
			loads = append(loads, fmt.Sprintf("%.1f → %.1f", r.load0, r.load1))
		}
		m := sums[i]
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %.2f | %.2f | %.2f | %.2f | %s |\n", s.name, m.rate,
			ratio(m.rate, &sums[0], rate), ratio(m.rate, &sums[1], rate), m.self, m.redis, m.mariadb, m.total, strings.Join(loads, ", "))
	}
	return b.String()
}
