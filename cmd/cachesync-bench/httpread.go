package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/goods"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/rs/zerolog"
)

// dbOnly is the no-cache baseline: every read runs the loader.
type dbOnly struct{}

func (dbOnly) Get(ctx context.Context, _ string, load cache.Loader) ([]byte, cache.Source, error) {
	v, found, err := load(ctx)
	if err == nil && !found {
		err = cache.ErrNotFound
	}
	return v, cache.FromDB, err
}

// httpRead measures GET /goods/{id} served with L1 hits, with L2 (Redis)
// only, and from the database only, in one run.
func httpRead(args []string) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	dur := fs.Duration("duration", 5*time.Second, "per variant")
	clients := fs.Int("clients", 32, "concurrent keep-alive clients")
	out := fs.String("out", "", "also write the table to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	db, rdb := e.db, e.rdb
	demo, err := os.ReadFile("configs/demo.sql")
	if err != nil {
		return fmt.Errorf("run from the repository root: %w", err)
	}
	if _, err := db.ExecContext(ctx, string(demo)); err != nil {
		return err
	}
	cfg := goods.Config{Table: "shop.t_goods", IDColumn: "goodsId"}
	cfg.SetDefaults()

	newCache := func(l1 int) (*cache.Cache, func(), error) {
		cc := cache.Config{L1Size: l1}
		cc.SetDefaults()
		if l1 == 0 {
			cc.L1Size = 0
		}
		c, err := cache.New(cc, rdb, keyspace.Keyspace{Prefix: "cachesync:"}, "cachesync:invalidations", zerolog.Nop(), nil)
		if err != nil {
			return nil, nil, err
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(cctx) }()
		for !c.Live() {
			time.Sleep(5 * time.Millisecond)
		}
		return c, func() { cancel(); <-done }, nil
	}
	type variant struct {
		name   string
		reader func() (goods.Reader, func(), error)
		source string
	}
	variants := []variant{
		{"L1 hits (in-process cache)", func() (goods.Reader, func(), error) { return newCache(100_000) }, "L1"},
		{"L2 only (Redis, L1 off)", func() (goods.Reader, func(), error) { return newCache(0) }, "L2"},
		{"DB only (no cache)", func() (goods.Reader, func(), error) { return dbOnly{}, func() {}, nil }, "DB"},
	}
	var b strings.Builder
	wrkPath, _ := exec.LookPath("wrk")
	gen := "a Go client in the same process"
	if wrkPath != "" {
		gen = "wrk (2 threads)"
	}
	fmt.Fprintf(&b, "GET /goods/{id} over loopback HTTP, %d keep-alive connections from %s, %s per variant (load generator and server share the 2 cores):\n\n", *clients, gen, *dur)
	fmt.Fprintf(&b, "| variant | requests/s | p50 | p99 | vs L2 only |\n|---|---:|---:|---:|---:|\n")
	type row struct {
		name     string
		rate     float64
		p50, p99 time.Duration
	}
	var rows []row
	for _, v := range variants {
		rdr, stop, err := v.reader()
		if err != nil {
			return err
		}
		h := goods.NewHandler(cfg, db, rdr, zerolog.Nop())
		mux := http.NewServeMux()
		mux.Handle("GET /goods/{id}", h)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: mux}
		go func() { _ = srv.Serve(ln) }()
		base := "http://" + ln.Addr().String()
		rate, p50, p99, err := hammer(ctx, base, *clients, *dur, v.source)
		if err == nil && wrkPath != "" {
			// wrk, a separate C process, loads the server with far less CPU
			// than a Go client in the same process: its figures are the
			// ones reported (the Go run above checked every X-Cache).
			var w wrkRun
			w, err = runWrk(ctx, base+"/goods/1", *clients, *dur, false)
			rate, p50, p99 = w.rate, w.p50, w.p99
		}
		_ = srv.Close()
		stop()
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		rows = append(rows, row{v.name, rate, p50, p99})
	}
	l2 := rows[1].rate
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %.2f× |\n", r.name, r.rate, ms(r.p50), ms(r.p99), r.rate/l2)
	}
	return emit(b.String(), *out)
}

// hammer runs clients for d and checks every response came from source
// (after a warm-up request per id).
func hammer(ctx context.Context, base string, clients int, d time.Duration, source string) (float64, time.Duration, time.Duration, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	for id := 1; id <= 3; id++ { // warm L1 and L2
		resp, err := client.Get(fmt.Sprintf("%s/goods/%d", base, id))
		if err != nil {
			return 0, 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var n atomic.Int64
	var wrong atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	t0 := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c; time.Now().Before(deadline); i++ {
				s := time.Now()
				resp, err := client.Get(fmt.Sprintf("%s/goods/%d", base, 1+i%3))
				if err != nil {
					wrong.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != source {
					wrong.Add(1)
				}
				lat[c] = append(lat[c], time.Since(s))
				n.Add(1)
			}
		}(c)
	}
	wg.Wait()
	took := time.Since(t0)
	if w := wrong.Load(); w > 0 {
		return 0, 0, 0, fmt.Errorf("%d responses failed or did not come from %s", w, source)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return float64(n.Load()) / took.Seconds(), all[len(all)/2], all[len(all)*99/100], nil
}

// runWrk loads url with wrk and parses its summary.
// Non-2xx answers are errors unless non2xxOK; extra are more wrk flags.
// wrkRun is one wrk measurement.
type wrkRun struct {
	rate     float64
	p50, p99 time.Duration
	cpu      time.Duration // wrk's own CPU time (user + system)
}

func runWrk(ctx context.Context, url string, conns int, d time.Duration, non2xxOK bool, extra ...string) (wrkRun, error) {
	args := append([]string{"-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency"}, extra...)
	cmd := exec.CommandContext(ctx, "wrk", append(args, url)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkRun{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	w := wrkRun{cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			w.rate, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 2 && f[0] == "50%":
			w.p50 = parseWrkDuration(f[1])
		case len(f) == 2 && f[0] == "99%":
			w.p99 = parseWrkDuration(f[1])
		case strings.Contains(line, "Non-2xx") && !non2xxOK:
			return wrkRun{}, fmt.Errorf("wrk saw errors: %s", line)
		case strings.HasPrefix(strings.TrimSpace(line), "Socket errors"):
			return wrkRun{}, fmt.Errorf("wrk saw socket errors: %s", line)
		}
	}
	if w.rate == 0 {
		return wrkRun{}, fmt.Errorf("wrk output not understood: %s", out)
	}
	return w, nil
}

func parseWrkDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return d
}
