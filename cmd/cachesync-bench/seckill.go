package main

import (
	"context"
	"database/sql"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// seckillBench measures, in one run on the same servers:
//  1. redis-benchmark running EVALSHA of the reservation script (the
//     ceiling: one Redis round trip per reservation, no HTTP, no Kafka);
//  2. POST /seckill/items/{id}/reservations on the daemon (HTTP + the
//     script + the order produced to Kafka and acknowledged), with wrk;
//  3. the same endpoint on a sold-out item (answered from the local flag);
//  4. the seed's MySQL scheme: SELECT stock … FOR UPDATE, UPDATE, INSERT
//     order, COMMIT per reservation, from Go clients (no HTTP: flattering
//     to the baseline).
func seckillBench(args []string) error {
	fs := flag.NewFlagSet("seckill", flag.ContinueOnError)
	dur := fs.Duration("duration", 8*time.Second, "per variant")
	clients := fs.Int("clients", 50, "concurrent connections")
	out := fs.String("out", "", "also write the table to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return errors.New("wrk is needed (apt-get install wrk; make bench installs it)")
	}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return errors.New("redis-benchmark is needed (Debian package redis-tools)")
	}
	ctx := context.Background()
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	kafka, err := testenv.NewKafka(testenv.KafkaTopic("cachesync.orders", 8), testenv.KafkaTopic("cachesync.orders.dlq", 1))
	if err != nil {
		return err
	}
	defer kafka.Close()
	schema, err := os.ReadFile(filepath.Join("seckill", "schema.sql"))
	if err != nil {
		return fmt.Errorf("run from the repository root: %w", err)
	}
	if _, err := e.db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS shop; USE shop; "+strings.TrimRight(strings.TrimSpace(string(schema)), ";")+
		"; INSERT INTO shop.sk_items (id, name, stock) VALUES (1, 'reserve', 1000000000), (2, 'sold out', 0), (3, 'for update', 1000000000)"); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	yaml := fmt.Sprintf(`mysql: {addr: %s, user: root}
redis: {addr: %s}
http: {addr: "127.0.0.1:%d"}
log: {level: error}
sink:
  rules:
    - {table: shop.sk_items, kind: mirror, key: "sk:{{{id}}}:stock", column: stock}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:pending", member: "{order_id}:{user_id}"}
    - {table: shop.sk_orders, kind: member, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [created, paid]}}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [canceled, failed]}}
seckill:
  enabled: true
  roles: [api, jobs]   # the consumer would compete for the 2 cores; orders wait in Kafka
  kafka: {brokers: [%s]}
  job_interval: 200ms
  orphan_age: 1h
`, e.my.Addr(), e.rd.Addr(), port, strings.Join(kafka.Brokers(), ","))
	cfg, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		return err
	}
	var srv *api.Server
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }), daemon.Options(cfg), fx.Populate(&srv))
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := app.Start(sctx); err != nil {
		return err
	}
	defer app.Stop(context.Background()) //nolint:errcheck // end of the run
	for _, item := range []int64{1, 2, 3} {
		for e.rdb.Exists(ctx, seckill.KeysFor("sk:", item).Ready).Val() == 0 {
			if sctx.Err() != nil {
				return fmt.Errorf("item %d never became ready", item)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	base := "http://" + srv.Addr().String()

	// 1. redis-benchmark EVALSHA of the same script on its own item.
	k := seckill.KeysFor("sk:", 9)
	e.rdb.Set(ctx, k.Stock, 1_000_000_000, 0)
	e.rdb.Set(ctx, k.Ready, 1, 0)
	sha, err := e.rdb.ScriptLoad(ctx, seckill.ReserveLua()).Result()
	if err != nil {
		return err
	}
	host, rport := splitAddr(e.rd.Addr())
	rb := exec.CommandContext(ctx, "redis-benchmark", "-h", host, "-p", strconv.Itoa(int(rport)), "-c", strconv.Itoa(*clients),
		"-n", "400000", "-r", "1000000000", "--csv",
		"EVALSHA", sha, "4", k.Stock, k.Pending, k.Buyers, k.Ready, "__rand_int__", "9-__rand_int__", strconv.FormatInt(time.Now().UnixMilli(), 10))
	rbOut, err := rb.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-benchmark: %v: %s", err, rbOut)
	}
	evalRate, evalP50, evalP99, err := parseRedisBenchCSV(string(rbOut))
	if err != nil {
		return err
	}
	reservedBefore := e.rdb.ZCard(ctx, k.Pending).Val()

	// 2. reservations over HTTP, unique users (wrk script).
	script := filepath.Join(os.TempDir(), "cachesync-reserve.lua")
	if err := os.WriteFile(script, []byte(wrkReserveLua), 0o644); err != nil {
		return err
	}
	defer os.Remove(script)
	p1 := seckill.KeysFor("sk:", 1).Pending
	before := e.rdb.ZCard(ctx, p1).Val()
	resRate, resP50, resP99, err := runWrk(ctx, base+"/seckill/items/1/reservations", *clients, *dur, false, "-s", script)
	if err != nil {
		return fmt.Errorf("reserve: %w", err)
	}
	reserved := e.rdb.ZCard(ctx, p1).Val() - before
	end, err := kafkaEnd(ctx, kafka.Brokers())
	if err != nil {
		return err
	}

	// 3. sold-out item: the first answer sets the local flag.
	if r, err := httpPost(base+"/seckill/items/2/reservations", `{"user_id":1}`); err != nil || r != 410 {
		return fmt.Errorf("sold-out item answered %d, %v", r, err)
	}
	soldRate, soldP50, soldP99, err := runWrk(ctx, base+"/seckill/items/2/reservations", *clients, *dur, true, "-s", script)
	if err != nil {
		return fmt.Errorf("sold out: %w", err)
	}

	// 4. SELECT … FOR UPDATE per reservation.
	fuRate, fuP50, fuP99, err := forUpdate(ctx, e.db, *clients, *dur)
	if err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "Reservations on one hot item, %d concurrent connections, %s per variant, load generators on the same 2 cores:\n\n", *clients, *dur)
	fmt.Fprintf(&b, "| variant | requests/s | p50 | p99 | ratio |\n|---|---:|---:|---:|---|\n")
	fmt.Fprintf(&b, "| redis-benchmark EVALSHA of reserve.lua (no HTTP, no Kafka) | %.0f | %s | %s | baseline |\n", evalRate, ms(evalP50), ms(evalP99))
	fmt.Fprintf(&b, "| POST reservation over HTTP, Lua + Kafka ack (wrk) | %.0f | %s | %s | **%.2f× EVALSHA**, **%.1f× FOR UPDATE** |\n", resRate, ms(resP50), ms(resP99), resRate/evalRate, resRate/fuRate)
	fmt.Fprintf(&b, "| POST on a sold-out item, local flag (wrk) | %.0f | %s | %s | **%.2f× reserve** |\n", soldRate, ms(soldP50), ms(soldP99), soldRate/resRate)
	fmt.Fprintf(&b, "| MySQL SELECT … FOR UPDATE + UPDATE + INSERT per reservation (Go, no HTTP) | %.0f | %s | %s | baseline |\n", fuRate, ms(fuP50), ms(fuP99))
	fmt.Fprintf(&b, "\nChecks: redis-benchmark reserved %d; the HTTP run made %d reservations and Kafka holds %d order messages.\n", reservedBefore, reserved, end)
	if end < reserved {
		return fmt.Errorf("%d reservations but only %d messages in Kafka", reserved, end)
	}
	return emit(b.String(), *out)
}

// wrkReserveLua posts {"user_id": N} with N unique per request.
const wrkReserveLua = `
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  counter = 0
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"user_id":' .. ((tid + 1) * 1000000000 + counter) .. '}')
end
`

func httpPost(url, body string) (int, error) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// kafkaEnd is the number of messages in the order topic.
func kafkaEnd(ctx context.Context, brokers []string) (int64, error) {
	c, err := sarama.NewClient(brokers, sarama.NewConfig())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	parts, err := c.Partitions("cachesync.orders")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, p := range parts {
		off, err := c.GetOffset("cachesync.orders", p, sarama.OffsetNewest)
		if err != nil {
			return 0, err
		}
		n += off
	}
	return n, ctx.Err()
}

// parseRedisBenchCSV reads redis-benchmark --csv output: rps and latencies.
func parseRedisBenchCSV(s string) (float64, time.Duration, time.Duration, error) {
	recs, err := csv.NewReader(strings.NewReader(s)).ReadAll()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("redis-benchmark csv: %w: %s", err, s)
	}
	for _, r := range recs {
		if len(r) >= 7 && r[0] != "test" {
			rate, _ := strconv.ParseFloat(r[1], 64)
			p50, _ := strconv.ParseFloat(r[4], 64)
			p99, _ := strconv.ParseFloat(r[6], 64)
			return rate, time.Duration(p50 * float64(time.Millisecond)), time.Duration(p99 * float64(time.Millisecond)), nil
		}
	}
	return 0, 0, 0, fmt.Errorf("redis-benchmark output not understood: %s", s)
}

// forUpdate runs the seed-000 style reservation in MySQL for d.
func forUpdate(ctx context.Context, db *sql.DB, clients int, d time.Duration) (float64, time.Duration, time.Duration, error) {
	var n atomic.Int64
	var firstErr error
	var mu sync.Mutex
	lat := make([][]time.Duration, clients)
	deadline := time.Now().Add(d)
	t0 := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				s := time.Now()
				err := func() error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					defer tx.Rollback() //nolint:errcheck // after Commit a no-op
					var stock int64
					if err := tx.QueryRowContext(ctx, "SELECT stock FROM shop.sk_items WHERE id = 3 FOR UPDATE").Scan(&stock); err != nil {
						return err
					}
					if stock < 1 {
						return errors.New("sold out")
					}
					if _, err := tx.ExecContext(ctx, "UPDATE shop.sk_items SET stock = stock - 1 WHERE id = 3"); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, "INSERT INTO shop.sk_orders (order_id, user_id, item_id, status, reserved_at) VALUES (?, ?, 3, 'created', NOW(6))",
						fmt.Sprintf("3-fu-%d-%d", c, i), int64(c)*1_000_000_000+int64(i)); err != nil {
						return err
					}
					return tx.Commit()
				}()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				lat[c] = append(lat[c], time.Since(s))
				n.Add(1)
			}
		}(c)
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, 0, fmt.Errorf("for update: %w", firstErr)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return float64(n.Load()) / time.Since(t0).Seconds(), all[len(all)/2], all[len(all)*99/100], nil
}
