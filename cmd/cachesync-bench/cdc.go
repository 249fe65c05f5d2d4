package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/redis/go-redis/v9"
)

// cdcOptions are the flags of the CDC benchmark.
type cdcOptions struct {
	rows       int           // row changes per workload
	runs       int           // runs per pipeline and workload; the median is reported
	floorBatch int           // rows the floor queues before it sends a pipeline
	rate       int           // offered load of the latency run, transactions/s
	latencyFor time.Duration // duration of the latency run
	pipelines  []string      // ids of the pipelines to run
	workloads  []string      // ids of the workloads to write
	profile    string        // prefix of per-run CPU profiles
	out        string
}

const tableKeys = 10_000 // rows in bench.t

// workload is one recorded binlog range of row changes to bench.t.
type workload struct {
	id, name   string
	rows       int
	start, end binlog.Position
	took       time.Duration
	final      map[int]int // id → v at end: what a rewrite rule's keys must hold after a replay
}

// workloadKinds write rows row changes to bench.t from 4 writers; txn(k)
// is the k-th transaction's SQL. Writer w sends the transactions k ≡ w
// (mod 4), and the two kinds are laid out so that no two writers ever
// touch the same row (no lock waits, no deadlocks).
var workloadKinds = []struct {
	id, name string
	perTxn   int
	txn      func(k int) string
}{
	{"single", "single-row UPDATEs, 10 per transaction", 10, func(k int) string {
		var q strings.Builder
		q.WriteString("BEGIN;")
		for j := range 10 {
			fmt.Fprintf(&q, "UPDATE bench.t SET v=v+1 WHERE id=%d;", (k*10+j)*7919%tableKeys)
		}
		q.WriteString("COMMIT")
		return q.String()
	}},
	{"stmt100", "100-row UPDATE statements, one per transaction", 100, func(k int) string {
		lo := k % (tableKeys / 100) * 100
		return fmt.Sprintf("UPDATE bench.t SET v=v+1 WHERE id >= %d AND id < %d", lo, lo+100)
	}},
}

// createTable creates bench.t with tableKeys rows.
func (e *env) createTable(ctx context.Context) error {
	var sb strings.Builder
	sb.WriteString(`CREATE DATABASE IF NOT EXISTS bench;
		CREATE TABLE bench.t (id INT PRIMARY KEY, v INT NOT NULL, name VARCHAR(32) NOT NULL, price DECIMAL(10,2) NOT NULL);
		INSERT INTO bench.t VALUES `)
	for i := range tableKeys {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "(%d,0,'item-%d',%d.50)", i, i, i%1000)
	}
	_, err := e.db.ExecContext(ctx, sb.String())
	return err
}

// write records workload kind i of rows row changes.
func (e *env) write(ctx context.Context, i, rows int) (*workload, error) {
	k := workloadKinds[i]
	w := &workload{id: k.id, name: k.name, rows: rows / k.perTxn * k.perTxn}
	var err error
	if w.start, err = binlog.CurrentPosition(ctx, e.db); err != nil {
		return nil, err
	}
	t0 := time.Now()
	const writers = 4
	errs := make(chan error, writers)
	for wr := range writers {
		go func() {
			for t := wr; t < w.rows/k.perTxn; t += writers {
				if _, err := e.db.ExecContext(ctx, k.txn(t)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if werr := <-errs; werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return nil, err
	}
	w.took = time.Since(t0)
	if w.end, err = binlog.CurrentPosition(ctx, e.db); err != nil {
		return nil, err
	}
	w.final = map[int]int{}
	rs, err := e.db.QueryContext(ctx, "SELECT id, v FROM bench.t")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	for rs.Next() {
		var id, v int
		if err := rs.Scan(&id, &v); err != nil {
			return nil, err
		}
		w.final[id] = v
	}
	return w, rs.Err()
}

// cdcPipeline is one way of replaying a workload's binlog range.
type cdcPipeline struct {
	id, name string
	// run replays w, calling win.begin once ready to start and win.finish
	// once done, and returns the row changes it applied.
	run func(ctx context.Context, w *workload, win *window) (int, error)
	// checked says the pipeline leaves tj:{id} holding the row as JSON.
	checked bool
}

func (e *env) pipelines(o cdcOptions) []cdcPipeline {
	all := []cdcPipeline{
		{id: "wire", name: "binlog read, nothing parsed (go-mysql raw mode)", run: e.wire},
		{id: "raw", name: "raw go-mysql BinlogSyncer parse (ceiling)", run: e.rawParse},
		{id: "floor", name: "floor: parse → JSON → pipelined SET (plain syncer)", checked: true,
			run: func(ctx context.Context, w *workload, win *window) (int, error) {
				return e.floor(ctx, w, win, o.floorBatch)
			}},
	}
	all = append(all, cdcPipeline{id: "floor-gc", name: "floor at the daemon's GC settings", checked: true,
		run: withDaemonGC(func(ctx context.Context, w *workload, win *window) (int, error) {
			return e.floor(ctx, w, win, o.floorBatch)
		})})
	for _, rs := range ruleSets {
		all = append(all, cdcPipeline{id: rs.id, name: "cachesync, " + rs.name + " rules", checked: rs.checked,
			run: withDaemonGC(func(ctx context.Context, w *workload, win *window) (int, error) {
				return e.applyRate(ctx, rs, w, win)
			})})
	}
	return slices.DeleteFunc(all, func(p cdcPipeline) bool { return !slices.Contains(o.pipelines, p.id) })
}

// withDaemonGC runs run with the garbage collector set as the daemon sets
// it by default (runtime.gc_percent and memory_limit: config.Runtime),
// unless GOGC or GOMEMLIMIT is set for this process. The other pipelines
// run at Go's defaults, as a plain syncer ships.
func withDaemonGC(run func(context.Context, *workload, *window) (int, error)) func(context.Context, *workload, *window) (int, error) {
	return func(ctx context.Context, w *workload, win *window) (int, error) {
		_, restore := daemon.TuneGC(gcDefaults(), os.LookupEnv)
		defer restore()
		return run(ctx, w, win)
	}
}

// gcDefaults is the daemon's default runtime section.
func gcDefaults() config.Runtime {
	var my binlog.Config
	my.SetDefaults()
	var rt config.Runtime
	rt.SetDefaults(my)
	return rt
}

// runResult is one measured run of one pipeline over one workload.
type runResult struct {
	rows         int
	took         time.Duration
	use          cdcUse
	load0, load1 float64
	cmds         []cmdStat // Redis INFO commandstats over the run
}

func (r runResult) rate() float64 { return float64(r.rows) / r.took.Seconds() }

// perRow is d in µs per row.
func (r runResult) perRow(d time.Duration) float64 {
	return float64(d.Nanoseconds()) / 1e3 / float64(r.rows)
}

// measure runs p over w once into an empty Redis with zeroed command
// statistics and checks the keys it must leave; with a profile path, the
// run's window is CPU-profiled into it.
func (e *env) measure(ctx context.Context, p cdcPipeline, w *workload, profile string) (runResult, error) {
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return runResult{}, err
	}
	if err := e.rdb.ConfigResetStat(ctx).Err(); err != nil {
		return runResult{}, err
	}
	win := &window{redisPIDs: []int{e.rd.PID()}, mariadbPIDs: []int{e.my.PID()}, profile: profile}
	n, err := p.run(ctx, w, win)
	if err == nil {
		err = win.err
	}
	if err != nil {
		return runResult{}, err
	}
	if n != w.rows {
		return runResult{}, fmt.Errorf("applied %d row changes, the workload wrote %d", n, w.rows)
	}
	r := runResult{rows: n, took: win.took, use: win.use, load0: win.load0, load1: win.load1}
	info, err := e.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return r, err
	}
	r.cmds = parseCommandstats(info)
	if p.checked {
		err = checkRows(ctx, e.rdb, "", w)
	}
	return r, err
}

// checkRows compares each key prefix+"tj:{id}"'s "v" with MySQL's at the
// end of w; a row the workload never changed (v still 0) has no key. The
// keys are read with pipelined GETs, which a cluster client sends to each
// key's master.
func checkRows(ctx context.Context, rdb redis.UniversalClient, prefix string, w *workload) error {
	gets := make([]*redis.StringCmd, tableKeys)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id := range gets {
			gets[id] = p.Get(ctx, prefix+"tj:"+strconv.Itoa(id))
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return err
	}
	bad := 0
	for id, g := range gets {
		var row struct{ V int }
		s, err := g.Result()
		if err == redis.Nil && w.final[id] == 0 {
			continue
		}
		if err != nil || json.Unmarshal([]byte(s), &row) != nil || row.V != w.final[id] {
			if bad == 0 {
				fmt.Fprintf(os.Stderr, "  %stj:%d = %q (%v), MySQL's v = %d\n", prefix, id, s, err, w.final[id])
			}
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d keys do not hold MySQL's row after the replay", bad, len(gets))
	}
	return nil
}
