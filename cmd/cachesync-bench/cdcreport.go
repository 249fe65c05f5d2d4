package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// run is the CDC benchmark: write each workload and replay it with every
// pipeline -runs times (round-robin, so that a change in the machine's
// load spreads over all of them), then the latency run.
func run(o cdcOptions) error {
	ctx := context.Background()
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	if err := e.createTable(ctx); err != nil {
		return err
	}
	rep := cdcReport{o: o, pipes: e.pipelines(o)}
	if len(rep.pipes) == 0 {
		return fmt.Errorf("no pipeline selected (-pipelines %q)", o.pipelines)
	}
	// Each workload is measured before the next is written: cachesync
	// cannot stop at a position, so nothing may follow the range it
	// replays (it would apply that too, inside the window).
	for i, k := range workloadKinds {
		if !slices.Contains(o.workloads, k.id) {
			continue
		}
		w, err := e.write(ctx, i, o.rows)
		if err != nil {
			return fmt.Errorf("workload %s: %w", k.id, err)
		}
		fmt.Fprintf(os.Stderr, "workload %s: %d row changes in %s (%.0f rows/s into MariaDB), binlog %s → %s\n",
			w.id, w.rows, w.took.Round(time.Millisecond), float64(w.rows)/w.took.Seconds(), w.start, w.end)
		runs := make([][]runResult, len(rep.pipes))
		for n := range o.runs {
			for pi, p := range rep.pipes {
				profile := ""
				if o.profile != "" {
					profile = fmt.Sprintf("%s.%s.%s.%d.pprof", o.profile, w.id, p.id, n+1)
				}
				r, err := e.measure(ctx, p, w, profile)
				if err != nil {
					return fmt.Errorf("%s, workload %s: %w", p.name, w.id, err)
				}
				fmt.Fprintf(os.Stderr, "run %d, %s, %s: %.0f rows/s; CPU µs/row: this process %.2f, Redis %.2f, MariaDB %.2f; load average %.2f → %.2f\n",
					n+1, w.id, p.id, r.rate(), r.perRow(r.use.self), r.perRow(r.use.redis), r.perRow(r.use.mariadb), r.load0, r.load1)
				runs[pi] = append(runs[pi], r)
			}
		}
		rep.workloads = append(rep.workloads, w)
		rep.runs = append(rep.runs, runs)
	}
	if len(rep.workloads) == 0 {
		return fmt.Errorf("no workload selected (-workloads %q)", o.workloads)
	}
	if o.rate > 0 {
		fmt.Fprintf(os.Stderr, "latency: %d txn/s offered for %s…\n", o.rate, o.latencyFor)
		lat, err := e.latency(ctx, o.rate, o.latencyFor)
		if err != nil {
			return err
		}
		rep.latency = &lat
	}
	return emit(rep.markdown(), o.out)
}

// cdcReport holds the CDC benchmark's results.
type cdcReport struct {
	o         cdcOptions
	workloads []*workload
	pipes     []cdcPipeline
	runs      [][][]runResult // [workload][pipeline][run]
	latency   *latencyResult
}

// summary is the medians of one pipeline's runs on one workload.
type summary struct {
	rate, self, redis, mariadb, total float64 // rows/s; µs per row
}

func summarize(rs []runResult) summary {
	col := func(f func(runResult) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		return median(xs)
	}
	return summary{
		rate:    col(runResult.rate),
		self:    col(func(r runResult) float64 { return r.perRow(r.use.self) }),
		redis:   col(func(r runResult) float64 { return r.perRow(r.use.redis) }),
		mariadb: col(func(r runResult) float64 { return r.perRow(r.use.mariadb) }),
		total:   col(func(r runResult) float64 { return r.perRow(r.use.self + r.use.redis) }),
	}
}

// ratio formats a/b, or "–" without b.
func ratio(a float64, b *summary, f func(summary) float64) string {
	if b == nil || f(*b) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/f(*b))
}

func (r cdcReport) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Each pipeline replays the same binlog range of each workload on a %d-row table into an empty Redis; %d runs each, round-robin, median reported; %d CPUs shared by MariaDB, Redis and this process. "+
		"CPU µs/row = the process's user + system time over the run (getrusage for this process, which runs only the measured pipeline; /proc/PID/stat for the servers) divided by the row changes. "+
		"The floor parses with the bare BinlogSyncer, encodes each after-image as JSON (map + encoding/json) and sends pipelined plain SETs of the rewrite rule's key, %d rows per pipeline, position saved every 3 s; no version guard, atomic apply, checkpoint or message. "+
		"cachesync's pipelines and the floor at the daemon's GC settings run with Go's collector as the daemon sets it by default (runtime.gc_percent %d, runtime.memory_limit %d MiB); the others at Go's defaults (GOGC=100, no limit), as a plain syncer ships. GOGC or GOMEMLIMIT set for the bench overrides both.\n",
		tableKeys, r.o.runs, runtime.NumCPU(), r.o.floorBatch, gcDefaults().GCPercent, gcDefaults().MemoryLimit>>20)
	for wi, w := range r.workloads {
		sums := make([]summary, len(r.pipes))
		var floor, raw *summary
		for pi, p := range r.pipes {
			sums[pi] = summarize(r.runs[wi][pi])
			switch p.id {
			case "floor":
				floor = &sums[pi]
			case "raw":
				raw = &sums[pi]
			}
		}
		fmt.Fprintf(&b, "\n%s: %d row changes.\n\n", w.name, w.rows)
		b.WriteString("| pipeline | rows/s | × floor | × raw parse | CPU µs/row: this process | Redis | MariaDB | process + Redis | × floor | load average, start → end of each run |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for pi, p := range r.pipes {
			s := sums[pi]
			var loads []string
			for _, x := range r.runs[wi][pi] {
				loads = append(loads, fmt.Sprintf("%.1f → %.1f", x.load0, x.load1))
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %s |\n", p.name, s.rate,
				ratio(s.rate, floor, func(s summary) float64 { return s.rate }), ratio(s.rate, raw, func(s summary) float64 { return s.rate }),
				s.self, s.redis, s.mariadb, s.total, ratio(s.total, floor, func(s summary) float64 { return s.total }), strings.Join(loads, ", "))
		}
		b.WriteString("\nRedis commands per row, all runs (INFO commandstats: µs is wall time inside the command, which on a loaded machine includes waiting for a CPU; a command a script runs counts on its own line and again inside evalsha):\n\n")
		for pi, p := range r.pipes {
			if line := cmdLine(r.runs[wi][pi]); line != "" {
				fmt.Fprintf(&b, "- %s: %s\n", p.name, line)
			}
		}
	}
	if l := r.latency; l != nil {
		fmt.Fprintf(&b, "\nCommit → invalidation message latency, %d single-row INSERT transactions from 16 writers, measured from just before COMMIT is sent (never clamped): %.0f txn/s offered, %.0f txn/s achieved.\n\n",
			l.n, l.offered, l.achieved)
		fmt.Fprintf(&b, "| min | p50 | p99 | max | negative |\n|---:|---:|---:|---:|---:|\n| %s | %s | %s | %s | %d |\n",
			ms(l.min), ms(l.p50), ms(l.p99), ms(l.max), l.negative)
	}
	return b.String()
}

// cmdLine lists the commands that took Redis time over rs, in calls and µs
// per row, most time first, leaving out those under 0.01 µs.
func cmdLine(rs []runResult) string {
	sum, rows := map[string]cmdStat{}, 0
	for _, r := range rs {
		rows += r.rows
		for _, c := range r.cmds {
			s := sum[c.name]
			s.name, s.calls, s.usec = c.name, s.calls+c.calls, s.usec+c.usec
			sum[c.name] = s
		}
	}
	var cs []cmdStat
	for _, c := range sum {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b cmdStat) int { return int(b.usec - a.usec) })
	var parts []string
	for _, c := range cs {
		if per := float64(c.usec) / float64(rows); per >= 0.01 {
			parts = append(parts, fmt.Sprintf("%s %.3g calls %.2f µs", c.name, float64(c.calls)/float64(rows), per))
		}
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
