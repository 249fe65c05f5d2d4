// Command cachesync-bench measures the CDC core on private MariaDB and
// Redis servers it starts itself, all in one run so the figures compare:
//
//  1. two recorded workloads on a 10k-row table (single-row UPDATEs, 10
//     per transaction; 100-row UPDATE statements), each replayed over the
//     SAME binlog range by: the raw go-mysql BinlogSyncer parse (the
//     ceiling for anything built on go-mysql); the floor, a plain syncer
//     that sends pipelined SETs of each row as JSON (what
//     go-mysql-transfer does: the cheapest syncer correct at rest); and
//     cachesync per rule set. For each: rows/s and CPU µs per row of this
//     process (where every pipeline runs), Redis and MariaDB, median of
//     -runs runs, with the load average at each run's start and end;
//  2. commit → invalidation message latency (p50/p99) at a fixed offered
//     load, from just before COMMIT is sent, with the achieved rate.
//
// Output is a Markdown report on stdout (and in -out if given); each run's
// figures go to stderr as they come.
//
// "cachesync-bench consistency" instead compares the seed's cache schemes
// with cachesync's (package harness); "cachesync-bench http" measures
// GET /goods/{id} with L1 hits vs L2 only vs DB only; "cachesync-bench
// seckill" measures reservations over HTTP against redis-benchmark EVALSHA
// of the same script and the seed's SELECT … FOR UPDATE deduction;
// "cachesync-bench memory" measures the daemon process's peak RSS on a
// one-transaction UPDATE of 1M rows, one 64 MiB row, and Redis paused 60 s
// under a steady writer (issue 9); "cachesync-bench cluster" measures the
// apply rate and CPU per row on a standalone Redis against a 3-master
// Redis Cluster, and of two sources (two MariaDB servers) applying at once
// on the cluster.
package main

import (
	"database/sql"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

func main() {
	if len(os.Args) > 1 {
		sub := map[string]func([]string) error{"consistency": consistency, "http": httpRead, "seckill": seckillBench, "memory": memoryBench, "cluster": clusterBench}[os.Args[1]]
		if sub != nil {
			if err := sub(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "cachesync-bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	var o cdcOptions
	flag.IntVar(&o.rows, "rows", 300_000, "row changes in each throughput workload")
	flag.IntVar(&o.runs, "runs", 3, "runs of each pipeline on each workload (the median is reported)")
	flag.IntVar(&o.floorBatch, "floor-batch", 2000, "rows the floor queues before it sends a pipeline (at a transaction's end; cachesync's sink.batch_changes is 2000)")
	flag.IntVar(&o.rate, "rate", 3000, "offered load for the latency run, transactions/s (0: no latency run)")
	secs := flag.Int("latency-seconds", 10, "duration of the latency run (0: no latency run)")
	pipes := flag.String("pipelines", "wire,raw,floor,floor-gc,invalidate,rewrite,all4", "pipelines to measure, comma-separated")
	wls := flag.String("workloads", "single,stmt100", "workloads to write and replay, comma-separated: single (single-row UPDATEs, 10 per transaction), stmt100 (100-row UPDATE statements)")
	flag.StringVar(&o.out, "out", "", "also write the Markdown table to this file")
	flag.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of each measured run to PREFIX.WORKLOAD.PIPELINE.RUN.pprof (profiling costs CPU in this process: the figures are then not comparable)")
	flag.Parse()
	o.latencyFor = time.Duration(*secs) * time.Second
	if *secs < 0 || o.rate < 0 {
		fmt.Fprintln(os.Stderr, "cachesync-bench: -rate and -latency-seconds must be 0 (no latency run) or more")
		os.Exit(2)
	}
	if *secs == 0 {
		o.rate = 0
	}
	o.pipelines, o.workloads = strings.Split(*pipes, ","), strings.Split(*wls, ",")
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cachesync-bench:", err)
		os.Exit(1)
	}
}

// env is a private MariaDB and Redis with clients, shared by every
// benchmark of one run.
type env struct {
	my  *testenv.MariaDB
	rd  *testenv.Redis
	db  *sql.DB // multiStatements on, 64 connections
	rdb *redis.Client
}

// startEnv starts the servers; close stops them.
func startEnv() (*env, func(), error) {
	fmt.Fprintln(os.Stderr, "starting private MariaDB and Redis…")
	e, closeDB, err := startMariaDB()
	if err != nil {
		return nil, nil, err
	}
	if e.rd, err = testenv.NewRedis(); err != nil {
		closeDB()
		return nil, nil, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.rd.Addr(), PoolSize: 64})
	return e, func() { e.rdb.Close(); e.rd.Close(); closeDB() }, nil
}

// startMariaDB starts a private MariaDB and opens e.db on it (e.rd and
// e.rdb are nil); close stops it.
func startMariaDB() (*env, func(), error) {
	my, err := testenv.NewMariaDB()
	if err != nil {
		return nil, nil, err
	}
	db, err := sql.Open("mysql", my.DSN("")+"&multiStatements=true")
	if err != nil {
		my.Close()
		return nil, nil, err
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	return &env{my: my, db: db}, func() { db.Close(); my.Close() }, nil
}

func splitAddr(addr string) (string, uint16) {
	i := strings.LastIndexByte(addr, ':')
	var p int
	fmt.Sscanf(addr[i+1:], "%d", &p)
	return addr[:i], uint16(p)
}

// emit prints a result table and, if path is set, writes it there too.
func emit(table, path string) error {
	fmt.Print(table)
	if path == "" {
		return nil
	}
	return os.WriteFile(path, []byte(table), 0o644)
}
