package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill"
	"github.com/redis/go-redis/v9"
)

// redisBenchEvalsha runs redis-benchmark with EVALSHA of the reservation
// script on k's item, clients connections each pipelining pipeline calls.
func redisBenchEvalsha(ctx context.Context, meter cpuMeter, addr, sha string, k seckill.Keys, clients, pipeline int, name string) (loadRow, error) {
	host, port := splitAddr(addr)
	const n = 400_000
	rb := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", strconv.Itoa(int(port)), "-c", strconv.Itoa(clients),
		"-P", strconv.Itoa(pipeline), "-n", strconv.Itoa(n), "-r", "1000000000", "--csv",
		"EVALSHA", sha, "5", k.Stock, k.Pending, k.Buyers, k.Ready, k.Outbox, "__rand_int__", "9-__rand_int__", strconv.FormatInt(time.Now().UnixMilli(), 10),
		`{"order_id":"9-__rand_int__","user_id":__rand_int__,"item_id":9,"reserved_ms":1}`)
	c0 := meter.read()
	out, err := rb.CombinedOutput()
	if err != nil {
		return loadRow{}, fmt.Errorf("redis-benchmark: %v: %s", err, out)
	}
	r := loadRow{name: name, n: n, gen: rb.ProcessState.UserTime() + rb.ProcessState.SystemTime(), use: meter.read().sub(c0), cdc: -1}
	if r.rate, r.p50, r.p99, err = parseRedisBenchCSV(string(out)); err != nil {
		return loadRow{}, err
	}
	return r, nil
}

// cdcTxns is the daemon's counter of transactions its CDC applied.
const cdcTxns = "cachesync_sink_transactions_total"

// metricsSnap is one scrape of the daemon's /metrics: series → value.
type metricsSnap map[string]float64

func scrape(url string) (metricsSnap, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	m, err := testenv.ParseMetrics(resp.Body)
	return metricsSnap(m), err
}

func (m metricsSnap) delta(before metricsSnap, series string) float64 {
	return m[series] - before[series]
}

// cdcProbe shows the daemon's CDC is running: it changes a MySQL row
// whose mirror rule writes Redis and waits for the value there.
type cdcProbe struct {
	db   *sql.DB
	rdb  *redis.Client
	item int64
	n    int64
}

func (p *cdcProbe) check(ctx context.Context) string {
	p.n++
	want := strconv.FormatInt(1000+p.n, 10)
	if _, err := p.db.ExecContext(ctx, "UPDATE shop.sk_items SET stock = ? WHERE id = ?", want, p.item); err != nil {
		return "probe failed: " + err.Error()
	}
	key := seckill.KeysFor("sk:", p.item).Stock
	t0 := time.Now()
	for time.Since(t0) < 10*time.Second {
		if p.rdb.Get(ctx, key).Val() == want {
			return fmt.Sprintf("yes, in %s", time.Since(t0).Round(time.Millisecond))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "NO (not in Redis after 10 s)"
}

// durability reads the servers' flush settings, which every variant
// shares.
func durability(ctx context.Context, e *env) (string, error) {
	var trx, binlog string
	if err := e.db.QueryRowContext(ctx, "SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog").Scan(&trx, &binlog); err != nil {
		return "", fmt.Errorf("mariadb settings: %w", err)
	}
	aof, err := e.rdb.ConfigGet(ctx, "appendonly").Result()
	if err != nil {
		return "", fmt.Errorf("redis settings: %w", err)
	}
	return fmt.Sprintf("MariaDB innodb_flush_log_at_trx_commit=%s, sync_binlog=%s (no fsync per commit); Redis appendonly=%s (in memory); "+
		"the Kafka broker (kfake) keeps its log in memory and acknowledges acks=all from memory: nothing is fsynced per reservation on either side", trx, binlog, aof["appendonly"]), nil
}
