// Package harness measures cache consistency schemes side by side against
// the same real MariaDB and Redis: N writers bump a version column of
// random rows, M readers read the rows through the scheme's cache, and the
// harness counts stale reads (a read older than the newest version whose
// COMMIT returned before the read began, minus a lag allowance) and keys
// still stale once writes stopped and CDC caught up.
//
// The schemes:
//
//  1. cache-aside, update the row then DEL the key (seed 000, scheme 1);
//  2. cache-aside with SELECT … FOR UPDATE on both paths (seed 000, scheme 2);
//  3. cachesync CDC invalidation, readers fill with a plain SET;
//  4. cachesync CDC invalidation + leases + L1 (package cache).
//
// FillDelay sleeps between a reader's database read and its fill, which
// reproduces the seed's race deterministically.
package harness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Scheme is a cache consistency scheme.
type Scheme int

// The schemes, numbered as in the package comment.
const (
	DeleteAfterUpdate Scheme = iota + 1
	ForUpdate
	CDCInvalidate
	CDCLease
)

// Schemes lists all schemes in order.
var Schemes = []Scheme{DeleteAfterUpdate, ForUpdate, CDCInvalidate, CDCLease}

func (s Scheme) String() string {
	switch s {
	case DeleteAfterUpdate:
		return "1. cache-aside + delete after update"
	case ForUpdate:
		return "2. cache-aside + SELECT … FOR UPDATE"
	case CDCInvalidate:
		return "3. CDC invalidation, no lease"
	case CDCLease:
		return "4. CDC invalidation + lease + L1"
	}
	return "scheme " + strconv.Itoa(int(s))
}

// Env is where the harness runs.
type Env struct {
	// DB reaches the server; the harness creates Options.Schema there.
	DB *sql.DB
	// MySQL is how the CDC schemes' pipeline reaches the same server.
	MySQL binlog.Config
	// Flavor is "mariadb" or "mysql".
	Flavor string
	// Redis is flushed at the start of every run.
	Redis *redis.Client
}

// Options shape a run.
type Options struct {
	Rows      int           // rows in the table (default 200)
	Writers   int           // writer goroutines (default 4)
	WriteRate int           // total writes per second offered (default 400)
	Readers   int           // reader goroutines (default 16)
	Duration  time.Duration // of the read/write phase (default 5s)
	FillDelay time.Duration // between a reader's DB read and its fill
	// LagAllowance: a read is stale if older than the newest version whose
	// COMMIT returned this long before the read began (default 100ms).
	LagAllowance time.Duration
	Schema       string // database for the table (default "harness")
}

func (o *Options) setDefaults() {
	if o.Rows == 0 {
		o.Rows = 200
	}
	if o.Writers == 0 {
		o.Writers = 4
	}
	if o.WriteRate == 0 {
		o.WriteRate = 400
	}
	if o.Readers == 0 {
		o.Readers = 16
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.LagAllowance == 0 {
		o.LagAllowance = 100 * time.Millisecond
	}
	if o.Schema == "" {
		o.Schema = "harness"
	}
}

// Result of one scheme's run.
type Result struct {
	Scheme        Scheme
	Reads, Writes int64
	ReadRate      float64 // reads/s
	WriteRate     float64 // writes/s achieved
	P50, P99      time.Duration
	StaleReads    int64
	StaleKeys     int // Redis keys unequal to the row after quiescence
	StaleL1       int // L1 entries unequal to the row after quiescence (scheme 4)
}

const keyPrefix = "hx:"

// Run measures one scheme.
func Run(ctx context.Context, env Env, s Scheme, o Options) (Result, error) {
	o.setDefaults()
	res := Result{Scheme: s}
	if err := setup(ctx, env, o); err != nil {
		return res, err
	}
	if err := env.Redis.FlushAll(ctx).Err(); err != nil {
		return res, err
	}
	r := &run{env: env, o: o, s: s, hist: newHistory()}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	if s == CDCInvalidate || s == CDCLease {
		if err := r.startCDC(runCtx, &bg); err != nil {
			return res, err
		}
	}
	defer bg.Wait()
	defer cancel()

	phase, stop := context.WithTimeout(runCtx, o.Duration)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, o.Writers+o.Readers)
	lat := make([][]time.Duration, o.Readers)
	t0 := time.Now()
	for w := 0; w < o.Writers; w++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- r.writer(phase) }()
	}
	for i := 0; i < o.Readers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- r.reader(phase, &lat[i]) }()
	}
	wg.Wait()
	took := time.Since(t0)
	close(errs)
	for err := range errs {
		if err != nil {
			return res, err
		}
	}
	res.Reads, res.Writes, res.StaleReads = r.reads.Load(), r.writes.Load(), r.stale.Load()
	res.ReadRate = float64(res.Reads) / took.Seconds()
	res.WriteRate = float64(res.Writes) / took.Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) > 0 {
		res.P50, res.P99 = all[len(all)/2], all[len(all)*99/100]
	}
	if err := r.quiesce(ctx); err != nil {
		return res, err
	}
	var err error
	res.StaleKeys, res.StaleL1, err = r.staleKeys(ctx)
	return res, err
}

func setup(ctx context.Context, env Env, o Options) error {
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS `" + o.Schema + "`",
		"CREATE TABLE IF NOT EXISTS `" + o.Schema + "`.items (id INT PRIMARY KEY, version BIGINT NOT NULL)",
		"DELETE FROM `" + o.Schema + "`.items",
	}
	for _, q := range stmts {
		if _, err := env.DB.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("harness setup: %w", err)
		}
	}
	tx, err := env.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit
	for id := 0; id < o.Rows; id++ {
		if _, err := tx.ExecContext(ctx, "INSERT INTO `"+o.Schema+"`.items VALUES (?, 0)", id); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// run is the state of one scheme's run.
type run struct {
	env                  Env
	o                    Options
	s                    Scheme
	hist                 *history
	applier              *sink.Applier
	cache                *cache.Cache
	reads, writes, stale atomic.Int64
}

func (r *run) table() string { return "`" + r.o.Schema + "`.items" }

// startCDC runs an in-process pipeline (and, for scheme 4, the read path's
// invalidation subscriber) until ctx is done.
func (r *run) startCDC(ctx context.Context, bg *sync.WaitGroup) error {
	bc := r.env.MySQL
	bc.Start = binlog.StartConfig{From: binlog.FromCurrent}
	bc.SetDefaults()
	sc := sink.Config{Rules: []sink.RuleConfig{{Table: r.o.Schema + ".items", Kind: sink.KindInvalidate, Keys: []string{keyPrefix + "{id}"}}}}
	sc.SetDefaults()
	a, err := sink.NewApplier(sc, r.env.Redis, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		return err
	}
	r.applier = a
	p := pipeline.New(bc, r.env.Flavor, r.env.DB, a, leader.Standalone(r.env.Redis, sc.KeyPrefix), sc.BatchChanges, zerolog.Nop(), prometheus.NewRegistry())
	bg.Add(1)
	go func() { defer bg.Done(); _ = p.Run(ctx) }()
	if r.s == CDCLease {
		cc := cache.Config{}
		cc.SetDefaults()
		c, err := cache.New(cc, r.env.Redis, sc.Keyspace(), sc.Channel, zerolog.Nop(), prometheus.NewRegistry())
		if err != nil {
			return err
		}
		r.cache = c
		bg.Add(1)
		go func() { defer bg.Done(); _ = c.Run(ctx) }()
	}
	deadline := time.Now().Add(30 * time.Second)
	for p.Ready() != nil || (r.cache != nil && !r.cache.Live()) {
		if time.Now().After(deadline) {
			return fmt.Errorf("CDC pipeline not ready: %v", p.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// writer bumps random rows' versions at its share of WriteRate until the
// phase ends. Each write runs to completion (context.WithoutCancel): a
// deadline hitting a Redis dial counts as a dial error in go-redis's pool,
// and after PoolSize of them (they are never reset by a success) the shared
// client fails every new dial for a while.
func (r *run) writer(phase context.Context) error {
	ctx := context.WithoutCancel(phase)
	interval := time.Duration(float64(time.Second) * float64(r.o.Writers) / float64(r.o.WriteRate))
	next := time.Now()
	for phase.Err() == nil {
		next = next.Add(interval)
		time.Sleep(time.Until(next))
		id := rand.IntN(r.o.Rows)
		if err := r.write(ctx, id); err != nil {
			return err
		}
		r.writes.Add(1)
	}
	return nil
}

func (r *run) write(ctx context.Context, id int) error {
	key := keyPrefix + strconv.Itoa(id)
	tx, err := r.env.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit
	if _, err := tx.ExecContext(ctx, "UPDATE "+r.table()+" SET version = version + 1 WHERE id = ?", id); err != nil {
		return err
	}
	lock := ""
	if r.s == ForUpdate {
		lock = " FOR UPDATE"
	}
	var v int64
	if err := tx.QueryRowContext(ctx, "SELECT version FROM "+r.table()+" WHERE id = ?"+lock, id).Scan(&v); err != nil {
		return err
	}
	if r.s == ForUpdate {
		if err := r.env.Redis.Del(ctx, key).Err(); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	r.hist.add(id, v, time.Now())
	if r.s == DeleteAfterUpdate {
		return r.env.Redis.Del(ctx, key).Err()
	}
	return nil
}

// reader reads random rows through the scheme's cache as fast as it can
// until the phase ends; each read runs to completion, like writes.
func (r *run) reader(phase context.Context, lat *[]time.Duration) error {
	ctx := context.WithoutCancel(phase)
	for phase.Err() == nil {
		id := rand.IntN(r.o.Rows)
		start := time.Now()
		v, err := r.read(ctx, id)
		if err != nil {
			return err
		}
		*lat = append(*lat, time.Since(start))
		r.reads.Add(1)
		if v < r.hist.required(id, start.Add(-r.o.LagAllowance)) {
			r.stale.Add(1)
		}
	}
	return nil
}

func (r *run) read(ctx context.Context, id int) (int64, error) {
	key := keyPrefix + strconv.Itoa(id)
	if r.s == CDCLease {
		b, _, err := r.cache.Get(ctx, key, func(ctx context.Context) ([]byte, bool, error) {
			v, err := r.load(ctx, r.env.DB, id, "")
			if err != nil {
				return nil, false, err
			}
			r.delay(ctx)
			return []byte(strconv.FormatInt(v, 10)), true, nil
		})
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(string(b), 10, 64)
	}
	s, err := r.env.Redis.Get(ctx, key).Result()
	if err == nil {
		return strconv.ParseInt(s, 10, 64)
	}
	if !errors.Is(err, redis.Nil) {
		return 0, err
	}
	if r.s == ForUpdate {
		tx, err := r.env.DB.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		defer tx.Rollback() //nolint:errcheck // after Commit
		v, err := r.load(ctx, tx, id, " FOR UPDATE")
		if err != nil {
			return 0, err
		}
		r.delay(ctx)
		if err := r.env.Redis.Set(ctx, key, v, 0).Err(); err != nil {
			return 0, err
		}
		return v, tx.Commit()
	}
	v, err := r.load(ctx, r.env.DB, id, "")
	if err != nil {
		return 0, err
	}
	r.delay(ctx)
	return v, r.env.Redis.Set(ctx, key, v, 0).Err()
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (r *run) load(ctx context.Context, q querier, id int, lock string) (int64, error) {
	var v int64
	err := q.QueryRowContext(ctx, "SELECT version FROM "+r.table()+" WHERE id = ?"+lock, id).Scan(&v)
	return v, err
}

func (r *run) delay(ctx context.Context) {
	if r.o.FillDelay <= 0 {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(r.o.FillDelay):
	}
}

// quiesce waits until CDC applied everything written (and in-flight fills
// had time to land).
func (r *run) quiesce(ctx context.Context) error {
	time.Sleep(r.o.FillDelay + 50*time.Millisecond)
	if r.applier == nil {
		return nil
	}
	pos, err := binlog.CurrentPosition(ctx, r.env.DB)
	if err != nil {
		return err
	}
	want, err := pos.Version()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if cp := r.applier.Applied(); cp != nil && cp.Version >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CDC did not catch up to %s", pos)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let the last invalidation messages reach L1
	return nil
}

// staleKeys compares every cached key (Redis and L1) with its row.
func (r *run) staleKeys(ctx context.Context) (redisStale, l1Stale int, err error) {
	rows, err := r.env.DB.QueryContext(ctx, "SELECT id, version FROM "+r.table())
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			return 0, 0, err
		}
		key := keyPrefix + strconv.Itoa(id)
		s, err := r.env.Redis.Get(ctx, key).Result()
		switch {
		case err == nil:
			if s != strconv.FormatInt(v, 10) {
				redisStale++
			}
		case !errors.Is(err, redis.Nil):
			return 0, 0, err
		}
		if r.cache != nil {
			if b, _, ok := r.cache.PeekL1(key); ok && string(b) != strconv.FormatInt(v, 10) {
				l1Stale++
			}
		}
	}
	return redisStale, l1Stale, rows.Err()
}
