package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill"
	"github.com/cachesync/cachesync/seckill/auth"
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
	prof := fs.String("cpuprofile", "", "write a CPU profile of the HTTP reservation variant here")
	onlyReserve := fs.Bool("only-reserve", false, "run the reservation variant alone and report its latency tail's causes (scheduler, GC, run-queue waits)")
	tokens := fs.Int("tokens", 400_000, "buyers' JWTs minted for the reservation run, one user each: more than it makes")
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
	loadBefore := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		loadBefore = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	broker, err := startDevKafka()
	if err != nil {
		return err
	}
	defer broker.stop()
	schema, err := os.ReadFile(filepath.Join("seckill", "schema.sql"))
	if err != nil {
		return fmt.Errorf("run from the repository root: %w", err)
	}
	if _, err := e.db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS shop; USE shop; "+strings.TrimRight(strings.TrimSpace(string(schema)), ";")+
		"; INSERT INTO shop.sk_items (id, name, stock) VALUES (1, 'reserve', 1000000000), (2, 'sold out', 0), (3, 'for update', 1000000000), (4, 'cdc probe', 1)"); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	// Buyers authenticate as in production: a JWT per user, verified on
	// every request (HS256, the daemon's secret).
	var sb [32]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return err
	}
	jwtCfg := auth.JWT{HS256Secret: hex.EncodeToString(sb[:])}
	yaml := fmt.Sprintf(`mysql: {addr: %s, user: root}
redis: {addr: %s}
http: {addr: "127.0.0.1:%d"}
admin: {addr: "127.0.0.1:0"}
log: {level: error}
sink:
  rules:
    - {table: shop.sk_items, kind: mirror, key: "sk:{{{id}}}:stock", column: stock}
    - {table: shop.sk_items, kind: member, key: "sk:items", member: "{id}"}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:pending", member: "{order_id}:{user_id}"}
    - {table: shop.sk_orders, kind: member, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [created, paid]}}
    - {table: shop.sk_orders, kind: member, op: remove, key: "sk:{{{item_id}}}:buyers", member: "{user_id}", value: "{order_id}", when: {column: status, in: [canceled, failed]}}
seckill:
  enabled: true
  roles: [api, jobs]   # the consumer would compete for the 2 cores; orders wait in Kafka
  kafka: {brokers: [%s]}
  job_interval: 200ms
  orphan_age: 1h
  limits: {per_ip: 0}  # wrk is one address
  auth: {mode: jwt, jwt: {hs256_secret: %s}}
`, e.my.Addr(), e.rd.Addr(), port, broker.addr, jwtCfg.HS256Secret)
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
	for _, item := range []int64{1, 2, 3, 4} {
		for e.rdb.Exists(ctx, seckill.KeysFor("sk:", item).Ready).Val() == 0 {
			if sctx.Err() != nil {
				return fmt.Errorf("item %d never became ready", item)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	base := "http://" + srv.PublicAddr().String()
	metricsURL := "http://" + srv.AdminAddr().String() + "/metrics"
	probe := cdcProbe{db: e.db, rdb: e.rdb, item: 4}
	settings, err := durability(ctx, e)
	if err != nil {
		return err
	}

	meter := cpuMeter{redis: e.rd.PID(), mariadb: e.my.PID(), broker: broker.cmd.Process.Pid}
	var rows []loadRow

	// 1. redis-benchmark EVALSHA of the same script on its own item.
	k := seckill.KeysFor("sk:", 9)
	e.rdb.Set(ctx, k.Stock, 1_000_000_000, 0)
	e.rdb.Set(ctx, k.Ready, 1, 0)
	sha, err := e.rdb.ScriptLoad(ctx, seckill.ReserveLua()).Result()
	if err != nil {
		return err
	}
	evalsha := func(name string, pipeline int) (loadRow, error) {
		return redisBenchEvalsha(ctx, meter, e.rd.Addr(), sha, k, *clients, pipeline, name)
	}
	eval, err := evalsha("redis-benchmark EVALSHA of reserve.lua, one call per round trip (no HTTP, no Kafka)", 1)
	if err != nil {
		return err
	}
	rows = append(rows, eval)
	reservedBefore := e.rdb.ZCard(ctx, k.Pending).Val()

	// 2. reservations over HTTP, unique users (wrk script), each with its
	// own token.
	tokFile, err := mintTokens(jwtCfg, *tokens)
	if err != nil {
		return err
	}
	defer os.Remove(tokFile)
	script := filepath.Join(os.TempDir(), "cachesync-reserve.lua")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(wrkReserveLua, tokFile)), 0o644); err != nil {
		return err
	}
	defer os.Remove(script)
	p1 := seckill.KeysFor("sk:", 1).Pending
	before := e.rdb.ZCard(ctx, p1).Val()
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	m0, err := scrape(metricsURL)
	if err != nil {
		return err
	}
	pids := map[string]int{"this process": 0, "Redis": e.rd.PID(), "Kafka broker": broker.cmd.Process.Pid, "MariaDB": e.my.PID()}
	s0 := readSched(pids)
	res, err := meter.wrk(ctx, "POST reservation over HTTP, JWT + Lua + Kafka ack (wrk)", base+"/seckill/items/1/reservations", *clients, *dur, false, script)
	pprof.StopCPUProfile()
	s1 := readSched(pids)
	m1, serr := scrape(metricsURL)
	if serr != nil {
		return serr
	}
	if err != nil {
		return fmt.Errorf("reserve (with more than %d requests users repeat and get 409: raise -tokens): %w", *tokens, err)
	}
	rows = append(rows, res)
	// wrk stops with requests in flight: their scripts ran, their orders
	// are still being produced. Count once both figures stand still.
	var reserved, end int64
	for deadline, stable := time.Now().Add(30*time.Second), 0; stable < 5; time.Sleep(100 * time.Millisecond) {
		r := e.rdb.ZCard(ctx, p1).Val() - before
		n, err := kafkaEnd(ctx, []string{broker.addr})
		if err != nil {
			return err
		}
		if r == reserved && n == end {
			stable++
		} else {
			stable = 0
		}
		reserved, end = r, n
		if time.Now().After(deadline) {
			return fmt.Errorf("reservations (%d) and Kafka messages (%d) still moving 30 s after the run", reserved, end)
		}
	}

	res.cdc = m1.delta(m0, cdcTxns)
	tail := s0.report(s1, res.n)
	if *onlyReserve {
		load, _ := os.ReadFile("/proc/loadavg")
		return emit(fmt.Sprintf("%s, %d connections, %s, GOMAXPROCS %d, load average before %s, after %s: %.0f requests/s, p50 %s, p99 %s; CPU µs/request wrk / Redis / MariaDB / broker / daemon: %s; reserve calls per pipeline %.1f.\n%s\n",
			res.name, *clients, *dur, runtime.GOMAXPROCS(0), loadBefore, strings.Join(strings.Fields(string(load))[:3], " "), res.rate, ms(res.p50), ms(res.p99), res.cpuPerRequest(),
			m1.delta(m0, "cachesync_seckill_reserve_pipeline_calls_sum")/max(1, m1.delta(m0, "cachesync_seckill_reserve_pipeline_calls_count")), tail), *out)
	}
	cdcLive := []string{"reservations: " + probe.check(ctx)}
	batch := m1.delta(m0, "cachesync_seckill_reserve_pipeline_calls_sum") /
		max(1, m1.delta(m0, "cachesync_seckill_reserve_pipeline_calls_count"))

	// 2b. EVALSHA pipelined as deep as the daemon's reserve pipelines were.
	depth := max(1, int(batch+0.5))
	evalP, err := evalsha(fmt.Sprintf("redis-benchmark EVALSHA of reserve.lua, pipelined -P %d like the daemon (no HTTP, no Kafka)", depth), depth)
	if err != nil {
		return err
	}
	rows = append(rows, evalP)

	// 3. sold-out item: the first answer sets the local flag.
	tok, err := auth.Mint(jwtCfg, 1, time.Hour, time.Now())
	if err != nil {
		return err
	}
	if r, err := httpPost(base+"/seckill/items/2/reservations", tok); err != nil || r != 410 {
		return fmt.Errorf("sold-out item answered %d, %v", r, err)
	}
	sold, err := meter.wrk(ctx, "POST on a sold-out item, local flag (wrk)", base+"/seckill/items/2/reservations", *clients, *dur, true, script)
	if err != nil {
		return fmt.Errorf("sold out: %w", err)
	}
	rows = append(rows, sold)

	// 4. the floor of any HTTP answer on this machine: a handler that only
	// reads the body and writes the sold-out answer, on a bare net/http
	// server in this process.
	floor, err := httpFloor(ctx, meter, *clients, *dur, script)
	if err != nil {
		return err
	}
	rows = append(rows, floor)

	// 5. SELECT … FOR UPDATE per reservation.
	m0, err = scrape(metricsURL)
	if err != nil {
		return err
	}
	c0 := meter.read()
	fu, err := forUpdate(ctx, e.db, *clients, *dur)
	if err != nil {
		return err
	}
	fu.use = meter.read().sub(c0)
	if m1, err = scrape(metricsURL); err != nil {
		return err
	}
	fu.cdc = m1.delta(m0, cdcTxns)
	cdcLive = append(cdcLive, "FOR UPDATE: "+probe.check(ctx))
	rows = append(rows, fu)

	var b strings.Builder
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "Reservations on one hot item, %d concurrent connections, %s per variant, everything on the same 2 cores (load average before the run %s, after %s). "+
		"CPU per request is each process's CPU time over the variant divided by the requests served; the Kafka broker is cmd/devkafka (kfake) in its own process; this process holds the daemon (its CDC applies the FOR UPDATE rows to Redis too) and the FOR UPDATE clients.\n\n",
		*clients, *dur, loadBefore, strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(&b, "| variant | requests/s | p50 | p99 | ratio | CPU µs/request: load generator / Redis / MariaDB / Kafka broker / this process | CDC transactions applied |\n|---|---:|---:|---:|---|---|---:|\n")
	ratio := []string{
		"baseline",
		fmt.Sprintf("**%.2f× EVALSHA**, %.2f× pipelined EVALSHA, **%.1f× FOR UPDATE**", res.rate/eval.rate, res.rate/evalP.rate, res.rate/fu.rate),
		fmt.Sprintf("%.2f× EVALSHA", evalP.rate/eval.rate),
		fmt.Sprintf("**%.2f× reserve**, %.2f× HTTP floor", sold.rate/res.rate, sold.rate/floor.rate),
		fmt.Sprintf("%.2f× EVALSHA, %.2f× reserve", floor.rate/eval.rate, floor.rate/res.rate),
		"baseline",
	}
	for i, r := range rows {
		cdc := "–"
		if r.cdc >= 0 && (i == 1 || i == len(rows)-1) {
			cdc = fmt.Sprintf("%.0f", r.cdc)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s | %s |\n", r.name, r.rate, ms(r.p50), ms(r.p99), ratio[i], r.cpuPerRequest(), cdc)
	}
	resCPU, floorCPU := res.perRequest(res.use.self), floor.perRequest(floor.use.self)
	fmt.Fprintf(&b, "\nDaemon CPU per reservation ÷ per HTTP-floor request: %.0f µs ÷ %.0f µs = **%.2f** (goal ≤ 2.0).\n", resCPU, floorCPU, resCPU/floorCPU)
	fmt.Fprintf(&b, "Pipelines: a Redis pipeline of the daemon carried %.1f reserve script calls on average during the reservation run (cachesync_seckill_reserve_pipeline_calls); the pipelined EVALSHA row uses -P %d.\n", batch, depth)
	fmt.Fprintf(&b, "Reservation run's tail: %s\n", tail)
	fmt.Fprintf(&b, "Durability, the same in every row (the same servers): %s.\n", settings)
	fmt.Fprintf(&b, "CDC running (a stock change of item 4 reached Redis after the variant): %s. In the reservation run nothing is written to MySQL (the consumer role is off), so CDC is idle; in the FOR UPDATE run it applies every order.\n", strings.Join(cdcLive, "; "))
	fmt.Fprintf(&b, "\nChecks: redis-benchmark reserved %d; the HTTP run made %d reservations and Kafka holds %d order messages.\n", reservedBefore, reserved, end)
	if end < reserved {
		return fmt.Errorf("%d reservations but only %d messages in Kafka", reserved, end)
	}
	return emit(b.String(), *out)
}

// loadRow is one variant's measurement.
type loadRow struct {
	name     string
	rate     float64
	p50, p99 time.Duration
	n        float64       // requests served
	gen      time.Duration // CPU of a separate load generator
	use      cpuUse        // CPU of the servers and this process
	cdc      float64       // transactions the daemon's CDC applied meanwhile
}

// perRequest is d in µs per request served.
func (r loadRow) perRequest(d time.Duration) float64 { return float64(d.Microseconds()) / r.n }

func (r loadRow) cpuPerRequest() string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d.Microseconds())/r.n) }
	gen := us(r.gen)
	if r.gen == 0 {
		gen = "(here)"
	}
	return gen + " / " + us(r.use.redis) + " / " + us(r.use.mariadb) + " / " + us(r.use.broker) + " / " + us(r.use.self)
}

// cpuMeter reads the CPU time of the servers and of this process.
type cpuMeter struct{ redis, mariadb, broker int }

type cpuUse struct{ redis, mariadb, broker, self time.Duration }

func (m cpuMeter) read() cpuUse {
	return cpuUse{redis: procCPU(strconv.Itoa(m.redis)), mariadb: procCPU(strconv.Itoa(m.mariadb)),
		broker: procCPU(strconv.Itoa(m.broker)), self: procCPU("self")}
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{redis: u.redis - v.redis, mariadb: u.mariadb - v.mariadb, broker: u.broker - v.broker, self: u.self - v.self}
}

// procCPU is a process's user + system time from /proc/PID/stat (fields
// 14 and 15, in clock ticks of 1/100 s on Linux); 0 if unreadable.
func procCPU(pid string) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // the name may hold spaces
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// wrk runs wrk with the reservation script against url and accounts CPU.
func (m cpuMeter) wrk(ctx context.Context, name, url string, clients int, d time.Duration, non2xxOK bool, script string) (loadRow, error) {
	c0 := m.read()
	w, err := runWrk(ctx, url, clients, d, non2xxOK, "-s", script)
	if err != nil {
		return loadRow{}, err
	}
	return loadRow{name: name, rate: w.rate, p50: w.p50, p99: w.p99, n: w.rate * d.Seconds(), gen: w.cpu, use: m.read().sub(c0)}, nil
}

// httpFloor measures a bare net/http handler that answers like the
// sold-out path: the most any HTTP endpoint can serve on this machine.
func httpFloor(ctx context.Context, m cpuMeter, clients int, d time.Duration, script string) (loadRow, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return loadRow{}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusGone)
		_, _ = io.WriteString(w, `{"error":"sold out"}`+"\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	r, err := m.wrk(ctx, "HTTP floor: bare net/http handler with the same answer (wrk)", "http://"+ln.Addr().String()+"/", clients, d, true, script)
	if err != nil {
		return loadRow{}, fmt.Errorf("http floor: %w", err)
	}
	return r, nil
}

// devKafka is cmd/devkafka running as a child process, so that the
// broker's CPU is accounted apart from the daemon's.
type devKafka struct {
	addr string
	cmd  *exec.Cmd
	dir  string
}

func startDevKafka() (*devKafka, error) {
	dir, err := os.MkdirTemp("", "cachesync-bench-kafka-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "devkafka")
	gobin := cmp.Or(os.Getenv("GO"), "go") // the Makefile exports GO
	if out, err := exec.Command(gobin, "build", "-o", bin, "./cmd/devkafka").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build devkafka: %v: %s", err, out)
	}
	port, err := testenv.FreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	k := &devKafka{addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}
	logPath := filepath.Join(dir, "devkafka.log")
	logf, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	k.cmd = exec.Command(bin, "-addr", k.addr, "-topic", "cachesync.orders:8", "-topic", "cachesync.orders.dlq:1")
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	if err := k.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), `"message":"ready"`) {
			return k, nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			k.stop()
			return nil, fmt.Errorf("devkafka not ready after 30 s: %s", b)
		}
	}
}

func (k *devKafka) stop() {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	_ = k.cmd.Wait()
	os.RemoveAll(k.dir)
}

// mintTokens writes n tokens, one per line, for users 1e9+1 … 1e9+n (a
// range no other variant uses) to a temporary file.
func mintTokens(cfg auth.JWT, n int) (string, error) {
	f, err := os.CreateTemp("", "cachesync-bench-tokens-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	now := time.Now()
	for i := 1; i <= n; i++ {
		tok, err := auth.Mint(cfg, 1_000_000_000+int64(i), time.Hour, now)
		if err != nil {
			os.Remove(f.Name())
			return "", err
		}
		w.WriteString(tok + "\n")
	}
	if err := w.Flush(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// wrkReserveLua posts an empty reservation with a bearer token read from
// the file %s, a different user per request: each of wrk's two threads
// (-t2, runWrk) takes every other line. Past the last token it starts
// again, and repeated users get 409 (wrk then reports non-2xx).
const wrkReserveLua = `
local tokens = {}
local n = 0
local i = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  local k = 0
  for line in io.lines("%s") do
    if k %% 2 == tid then
      n = n + 1
      tokens[n] = line
    end
    k = k + 1
  end
end
wrk.method = "POST"
request = function()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]}, nil)
end
`

// httpPost posts an empty reservation as the token's user.
func httpPost(url, token string) (int, error) {
	req, err := http.NewRequest("POST", url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
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
// The first column, the command, is not CSV-quoted (a JSON argument's
// quotes stay as they are), so each line is read from its end: the last
// seven columns are the figures.
func parseRedisBenchCSV(s string) (float64, time.Duration, time.Duration, error) {
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Split(strings.TrimSpace(line), ",")
		if len(f) < 8 || strings.HasPrefix(line, `"test"`) {
			continue
		}
		num := func(i int) float64 {
			v, _ := strconv.ParseFloat(strings.Trim(f[len(f)-7+i], `"`), 64)
			return v
		}
		rate, p50, p99 := num(0), num(3), num(5)
		if rate == 0 {
			continue
		}
		return rate, time.Duration(p50 * float64(time.Millisecond)), time.Duration(p99 * float64(time.Millisecond)), nil
	}
	return 0, 0, 0, fmt.Errorf("redis-benchmark output not understood: %s", s)
}

// forUpdate runs the seed-000 style reservation in MySQL for d.
func forUpdate(ctx context.Context, db *sql.DB, clients int, d time.Duration) (loadRow, error) {
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
		return loadRow{}, fmt.Errorf("for update: %w", firstErr)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return loadRow{
		name: "MySQL SELECT … FOR UPDATE + UPDATE + INSERT per reservation (Go clients here, no HTTP)",
		rate: float64(n.Load()) / time.Since(t0).Seconds(), p50: all[len(all)/2], p99: all[len(all)*99/100], n: float64(n.Load()),
	}, nil
}
