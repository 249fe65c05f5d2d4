package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// memoryBench measures the peak RSS of the cachesync daemon, a child
// process built from ./cmd/cachesync, in the scenarios of issue 9:
//
//	A. one UPDATE of -rows rows in one transaction (rewrite json + mirror);
//	B. one -blob-mib LONGBLOB row (mirror);
//	C. Redis paused for -pause while a writer commits -rate transactions/s
//	   of 10 row updates, then the catch-up; every key is compared with
//	   MySQL afterwards.
//
// The daemon's first run, which snapshots the tables, is reported too. Each
// scenario starts a fresh daemon (resuming from the checkpoint) and waits
// until it caught up, so one scenario's garbage does not count in the next;
// the peak is VmHWM after "echo 5 > /proc/PID/clear_refs", and VmRSS is
// sampled every 100 ms for -timeline. A scenario is applied when a marker
// row written after it reached Redis. They run in the order A, C, B so that
// a daemon stuck on the blob cannot spoil C.
func memoryBench(args []string) error {
	fs := flag.NewFlagSet("memory", flag.ContinueOnError)
	var o memOptions
	fs.IntVar(&o.rows, "rows", 1_000_000, "rows of the one-transaction UPDATE (A)")
	fs.IntVar(&o.blobMiB, "blob-mib", 64, "size of the one LONGBLOB row (B), MiB")
	fs.DurationVar(&o.pause, "pause", 60*time.Second, "how long Redis is paused (C)")
	fs.IntVar(&o.rate, "rate", 500, "transactions/s of 10 row updates offered during C")
	fs.StringVar(&o.pauseMode, "pause-mode", "client", "client: CLIENT PAUSE <ms> WRITE; sigstop: SIGSTOP, then SIGCONT, redis-server")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long a scenario may take to reach Redis")
	fs.StringVar(&o.out, "out", "", "also write the Markdown report to this file")
	fs.StringVar(&o.timeline, "timeline", "", "write the 100 ms VmRSS samples here as CSV (scenario,ms,rss_kib)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", 0, "ha.lease_ttl of the daemon (0: its default, 3s)")
	fs.BoolVar(&o.keep, "keep", false, "keep the daemon's configuration and logs (kept anyway on error)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.pauseMode != "client" && o.pauseMode != "sigstop" {
		return fmt.Errorf("-pause-mode %q: want client or sigstop", o.pauseMode)
	}
	dir, err := os.MkdirTemp("", "cachesync-bench-memory-")
	if err != nil {
		return err
	}
	m := &memRun{o: o, dir: dir}
	err = m.run(context.Background())
	if err != nil || o.keep {
		fmt.Fprintf(os.Stderr, "daemon configuration and logs kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	return err
}

type memOptions struct {
	rows, blobMiB, rate int
	pause, timeout      time.Duration
	leaseTTL            time.Duration
	pauseMode           string
	out, timeline       string
	keep                bool
}

// memRun is one run of the memory benchmark: the servers, the daemon
// currently running and the rows of the report.
type memRun struct {
	*env
	o        memOptions
	dir, bin string
	cfg      string
	d        *daemonProc
	runs     int
	marker   int
	rows     []*memRow
	timeline strings.Builder
}

func (m *memRun) run(ctx context.Context) error {
	m.bin = filepath.Join(m.dir, "cachesync")
	gobin := cmp.Or(os.Getenv("GO"), "go") // the Makefile exports GO
	if out, err := exec.Command(gobin, "build", "-o", m.bin, "./cmd/cachesync").CombinedOutput(); err != nil {
		return fmt.Errorf("build cachesync (run from the repository root): %v: %s", err, out)
	}
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	m.env = e
	// The slow log keeps every command of 100 ms or more, for the report.
	if err := e.rdb.ConfigSet(ctx, "slowlog-log-slower-than", "100000").Err(); err != nil {
		return err
	}
	if err := e.rdb.ConfigSet(ctx, "slowlog-max-len", "100000").Err(); err != nil {
		return err
	}
	if err := m.load(ctx); err != nil {
		return err
	}
	m.cfg = filepath.Join(m.dir, "cachesync.yaml")
	if err := os.WriteFile(m.cfg, []byte(memConfig(e.my.Addr(), e.rd.Addr(), m.o.leaseTTL)), 0o644); err != nil {
		return err
	}
	defer func() {
		if m.d != nil {
			m.d.stop()
		}
	}()
	if m.d, err = m.startDaemon(); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "first run: snapshot")
	m.measure("first run: snapshot", m.snapshot)
	var stopped error // a daemon that does not restart and catch up ends the run; the report shows what ran
	for _, s := range []struct {
		name string
		fn   func(context.Context, *memRow) error
	}{
		{"A. one-transaction UPDATE", m.bigUpdate},
		{"C. Redis paused, writer on", m.redisPause},
		{"B. one big row", m.bigRow},
	} {
		fmt.Fprintln(os.Stderr, s.name)
		if err := m.restart(ctx); err != nil {
			stopped = fmt.Errorf("%s: restarting the daemon: %w", s.name, err)
			break
		}
		m.measure(s.name, func(r *memRow) error { return s.fn(ctx, r) })
	}
	if m.o.timeline != "" {
		if err := os.WriteFile(m.o.timeline, []byte("scenario,ms,rss_kib\n"+m.timeline.String()), 0o644); err != nil {
			return err
		}
	}
	return cmp.Or(emit(m.report(), m.o.out), stopped)
}

// load creates the tables: mem.big with -rows rows (A), mem.blobs (B),
// mem.steady with 10,000 rows (C) and mem.markers. The global
// max_allowed_packet goes to 256 MiB first, and the pool reconnects so
// that its sessions have it.
func (m *memRun) load(ctx context.Context) error {
	if _, err := m.db.ExecContext(ctx, "SET GLOBAL max_allowed_packet = 256*1024*1024"); err != nil {
		return err
	}
	m.db.SetMaxIdleConns(0) // closes the idle connections: new ones get the new value
	m.db.SetMaxIdleConns(64)
	fmt.Fprintf(os.Stderr, "loading %d rows…\n", m.o.rows)
	_, err := m.db.ExecContext(ctx, fmt.Sprintf(`CREATE DATABASE mem; USE mem;
		CREATE TABLE mem.big (id INT PRIMARY KEY, v INT NOT NULL, pad VARCHAR(100) NOT NULL);
		INSERT INTO mem.big SELECT seq, 0, RPAD(CONCAT('row-', seq, '-'), 100, 'x') FROM seq_1_to_%d;
		CREATE TABLE mem.blobs (id INT PRIMARY KEY, data LONGBLOB);
		CREATE TABLE mem.steady (id INT PRIMARY KEY, v INT NOT NULL, pad VARCHAR(100) NOT NULL);
		INSERT INTO mem.steady SELECT seq, 0, RPAD(CONCAT('row-', seq, '-'), 100, 'x') FROM seq_1_to_%d;
		CREATE TABLE mem.markers (id INT PRIMARY KEY, v INT NOT NULL)`, m.o.rows, steadyRows))
	return err
}

const steadyRows = 10_000

func memConfig(mysqlAddr, redisAddr string, leaseTTL time.Duration) string {
	ha := ""
	if leaseTTL > 0 {
		ha = fmt.Sprintf("ha:\n  lease_ttl: %s\n", leaseTTL)
	}
	return ha + fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
  heartbeat: 1s
redis:
  addr: %s
http:
  addr: 127.0.0.1:0
admin:
  addr: 127.0.0.1:0
log:
  level: info
  format: json
sink:
  rules:
    - {table: mem.big, kind: rewrite, key: "t:{id}", format: json}
    - {table: mem.big, kind: mirror, key: "tv:{id}", column: v}
    - {table: mem.blobs, kind: mirror, key: "blob:{id}", column: data}
    - {table: mem.steady, kind: rewrite, key: "c:{id}", format: json}
    - {table: mem.steady, kind: mirror, key: "cv:{id}", column: v}
    - {table: mem.markers, kind: mirror, key: "marker:{id}", column: v}
`, mysqlAddr, 1000+rand.N(1<<30), redisAddr)
}

// memRow is one line of the report. Sizes are KiB.
type memRow struct {
	name, size, target, check, note string
	limitMiB                        int64 // 0: no target
	before, peak, after             int64
	apply                           time.Duration
	cpu                             float64
	load                            string
	logs                            []string
	slow                            string // the slowest Redis commands
	err                             error
	t0                              time.Time // the first sample
	samples                         []int64   // VmRSS every 100 ms from t0
	pauseFrom, pauseTo              time.Duration
}

// measure runs fn on the current daemon and records its RSS, CPU time, the
// load average and the warn and error lines of its log meanwhile. fn may
// reset the peak itself (and set before) when only a later part counts.
func (m *memRun) measure(name string, fn func(*memRow) error) {
	r := &memRow{name: name}
	m.rows = append(m.rows, r)
	pid := m.d.cmd.Process.Pid
	logFrom := fileLen(m.d.log)
	cpu0, _ := cpuSeconds(pid)
	r.before, _, _ = procRSS(pid)
	if err := resetPeak(pid); err != nil {
		r.err = err
		return
	}
	ctx := context.Background()
	_ = m.rdb.Do(ctx, "SLOWLOG", "RESET").Err()
	s := startSampler(pid)
	r.t0 = s.t0
	r.err = fn(r)
	r.samples = s.finish()
	var err error
	if r.after, r.peak, err = procRSS(pid); err != nil {
		r.err = errors.Join(r.err, fmt.Errorf("the daemon is gone: %w", err))
	}
	cpu1, _ := cpuSeconds(pid)
	r.cpu = cpu1 - cpu0
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	r.logs = logSummary(m.d.log, logFrom)
	r.slow = slowest(ctx, m.rdb)
	for i, kib := range r.samples {
		fmt.Fprintf(&m.timeline, "%q,%d,%d\n", name, i*100, kib)
	}
	if r.err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, r.err)
	}
}

func (m *memRun) startDaemon() (*daemonProc, error) {
	m.runs++
	return startDaemon(m.bin, m.cfg, filepath.Join(m.dir, fmt.Sprintf("run-%d.log", m.runs)))
}

// restart stops the daemon (SIGTERM) and starts a new one, which resumes
// from the checkpoint; it returns once the new one caught up and idled 2 s.
func (m *memRun) restart(ctx context.Context) error {
	if err := m.d.stop(); err != nil {
		return err
	}
	var err error
	if m.d, err = m.startDaemon(); err != nil {
		return err
	}
	if err := m.catchUp(ctx); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	return nil
}

// catchUp writes the next marker row and waits until its key holds it.
func (m *memRun) catchUp(ctx context.Context) error {
	m.marker++
	n := strconv.Itoa(m.marker)
	if _, err := m.db.ExecContext(ctx, "INSERT INTO mem.markers VALUES (?, ?)", m.marker, m.marker); err != nil {
		return err
	}
	return m.waitFor(ctx, "marker "+n, func() bool { return m.rdb.Get(ctx, "marker:"+n).Val() == n })
}

// waitFor polls cond every 20 ms for at most -timeout, and gives up early
// if the daemon exits.
func (m *memRun) waitFor(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(m.o.timeout)
	for !cond() {
		select {
		case <-m.d.done:
			return fmt.Errorf("waiting for %s: the daemon exited: %v; last log lines:\n%s", what, m.d.err, tail(m.d.log, 15))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not in Redis after %s", what, m.o.timeout)
		}
	}
	return nil
}

func (m *memRun) snapshot(r *memRow) error {
	ctx := context.Background()
	r.size = fmt.Sprintf("%d + %d rows", m.o.rows, steadyRows)
	err := m.waitFor(ctx, "the snapshot", func() bool {
		h := m.rdb.HGetAll(ctx, "cachesync:snapshot:progress").Val()
		for f, v := range h {
			if v != "done" && !strings.HasPrefix(f, "rules:") { // rules: the rules' fingerprint
				return false
			}
		}
		return len(h) > 0 && m.rdb.Exists(ctx, "cachesync:checkpoint").Val() == 1
	})
	if err == nil {
		err = m.catchUp(ctx)
	}
	r.apply = time.Since(r.t0)
	r.note = "time from the daemon's start"
	return err
}

// bigUpdate is A: UPDATE of every row of mem.big in one statement.
func (m *memRun) bigUpdate(ctx context.Context, r *memRow) error {
	r.target, r.limitMiB = "≤ 512 MiB", 512
	t := time.Now()
	res, err := m.db.ExecContext(ctx, "UPDATE mem.big SET v = v + 1")
	if err != nil {
		return err
	}
	n, _ := res.RowsAffected()
	r.size = fmt.Sprintf("%d rows, 1 txn", n)
	r.note = fmt.Sprintf("the UPDATE took %s in MariaDB", time.Since(t).Round(time.Millisecond))
	t = time.Now()
	if err := m.catchUp(ctx); err != nil {
		return err
	}
	r.apply = time.Since(t)
	var ids []any
	for i := 1; i <= m.o.rows; i += max(1, m.o.rows/1000) {
		ids = append(ids, i)
	}
	ids = append(ids, m.o.rows)
	r.check, err = m.compare(ctx, "mem.big", "t:", "tv:", ids)
	return err
}

// bigRow is B: INSERT of one LONGBLOB row of -blob-mib MiB.
func (m *memRun) bigRow(ctx context.Context, r *memRow) error {
	size := m.o.blobMiB << 20
	r.size = fmt.Sprintf("1 row, %d MiB", m.o.blobMiB)
	r.target, r.limitMiB = fmt.Sprintf("≤ 256 + 3×%d MiB", m.o.blobMiB), int64(256+3*m.o.blobMiB)
	var n int
	var sum string
	err := m.db.QueryRowContext(ctx, "INSERT INTO mem.blobs VALUES (1, REPEAT('0123456789abcdef', ?)) RETURNING LENGTH(data), MD5(data)",
		size/16).Scan(&n, &sum)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("MariaDB stored %d bytes, not %d (max_allowed_packet?)", n, size)
	}
	t := time.Now()
	if err := m.catchUp(ctx); err != nil {
		return err
	}
	r.apply = time.Since(t)
	b, err := m.rdb.Get(ctx, "blob:1").Bytes()
	h := md5.Sum(b)
	switch {
	case err != nil:
		r.check = fmt.Sprintf("GET blob:1: %v", err)
	case hex.EncodeToString(h[:]) != sum:
		r.check = fmt.Sprintf("blob:1 differs: %d bytes, md5 %x; MySQL %d bytes, md5 %s", len(b), h, n, sum)
	default:
		r.check = "ok: blob:1 equals MySQL (md5)"
	}
	return nil
}

// redisPause is C: a writer offers -rate transactions/s for 10 s, then
// Redis is paused for -pause while it goes on; after that the writer stops
// and the daemon catches up. The peak counts from the pause on.
func (m *memRun) redisPause(ctx context.Context, r *memRow) error {
	w := startWriter(m.env, m.o.rate)
	defer w.finish()
	time.Sleep(10 * time.Second)
	pid := m.d.cmd.Process.Pid
	r.before, _, _ = procRSS(pid)
	if err := resetPeak(pid); err != nil {
		return err
	}
	r.pauseFrom = time.Since(r.t0)
	if m.o.pauseMode == "client" {
		if err := m.rdb.Do(ctx, "CLIENT", "PAUSE", m.o.pause.Milliseconds(), "WRITE").Err(); err != nil {
			return err
		}
		time.Sleep(m.o.pause)
		_ = m.rdb.Do(ctx, "CLIENT", "UNPAUSE").Err() // expired by now
	} else {
		rpid := m.rd.PID()
		if err := syscall.Kill(rpid, syscall.SIGSTOP); err != nil {
			return err
		}
		time.Sleep(m.o.pause)
		if err := syscall.Kill(rpid, syscall.SIGCONT); err != nil {
			return err
		}
	}
	resumed := time.Now()
	r.pauseTo = time.Since(r.t0)
	txns, took, err := w.finish()
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	r.size = fmt.Sprintf("%d txns × 10 rows (%.0f txn/s)", txns, float64(txns)/took.Seconds())
	r.note = fmt.Sprintf("Redis paused %s (%s); time to apply from the end of the pause", m.o.pause, m.o.pauseMode)
	if err := m.catchUp(ctx); err != nil {
		return err
	}
	r.apply = time.Since(resumed)
	ids := make([]any, steadyRows)
	for i := range ids {
		ids[i] = i + 1
	}
	r.check, err = m.compare(ctx, "mem.steady", "c:", "cv:", ids)
	return err
}

// compare checks the rows ids of table against their rewrite (json) and
// mirror (v) keys and says how many differ.
func (m *memRun) compare(ctx context.Context, table, jsonPrefix, vPrefix string, ids []any) (string, error) {
	want := map[int]int{}
	for chunk := range slices.Chunk(ids, 1000) {
		rows, err := m.db.QueryContext(ctx, "SELECT id, v FROM "+table+" WHERE id IN (?"+strings.Repeat(",?", len(chunk)-1)+")", chunk...)
		if err != nil {
			return "", err
		}
		for rows.Next() {
			var id, v int
			if err := rows.Scan(&id, &v); err != nil {
				rows.Close()
				return "", err
			}
			want[id] = v
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return "", err
		}
	}
	bad, first := 0, ""
	for id, v := range want {
		js, _ := m.rdb.Get(ctx, jsonPrefix+strconv.Itoa(id)).Result()
		mv, _ := m.rdb.Get(ctx, vPrefix+strconv.Itoa(id)).Result()
		var doc struct{ ID, V int }
		err := json.Unmarshal([]byte(js), &doc)
		if err != nil || doc.ID != id || doc.V != v || mv != strconv.Itoa(v) {
			if bad++; first == "" {
				first = fmt.Sprintf("; first: id %d v %d, Redis %s%d=%q %s%d=%q", id, v, jsonPrefix, id, js, vPrefix, id, mv)
			}
		}
	}
	if bad == 0 {
		return fmt.Sprintf("ok: %d rows equal MySQL (json and mirror)", len(want)), nil
	}
	return fmt.Sprintf("LOST: %d of %d rows differ%s", bad, len(want), first), nil
}

// writer commits transactions of 10 single-row UPDATEs of mem.steady at a
// fixed rate from 4 connections, each on its own ids (no deadlocks).
type writer struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	t0    time.Time
	txns  atomic.Int64
	errMu sync.Mutex
	err   error
	once  sync.Once
	took  time.Duration
}

func startWriter(e *env, rate int) *writer {
	const conns = 4
	w := &writer{stop: make(chan struct{}), t0: time.Now()}
	interval := time.Second * conns / time.Duration(rate)
	for c := range conns {
		w.wg.Go(func() {
			var q strings.Builder
			for k := 0; ; k++ {
				select {
				case <-w.stop:
					return
				case <-time.After(time.Until(w.t0.Add(time.Duration(k) * interval))):
				}
				ids := make([]int, 10)
				for j := range ids {
					ids[j] = 1 + c + conns*rand.IntN(steadyRows/conns)
				}
				slices.Sort(ids)
				q.Reset()
				q.WriteString("BEGIN;")
				for _, id := range ids {
					fmt.Fprintf(&q, "UPDATE mem.steady SET v = v + 1 WHERE id = %d;", id)
				}
				q.WriteString("COMMIT")
				if _, err := e.db.Exec(q.String()); err != nil {
					w.errMu.Lock()
					w.err = cmp.Or(w.err, err)
					w.errMu.Unlock()
					return
				}
				w.txns.Add(1)
			}
		})
	}
	return w
}

// finish stops the writer and waits for it; it is safe to call twice.
func (w *writer) finish() (txns int64, took time.Duration, err error) {
	w.once.Do(func() {
		close(w.stop)
		w.wg.Wait()
		w.took = time.Since(w.t0)
	})
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.txns.Load(), w.took, w.err
}

// daemonProc is one run of the daemon: `cachesync run -config …` in its
// own process group, killed if this process dies, logging to log.
type daemonProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it exited
	err  error         // of Wait, once done is closed
}

func startDaemon(bin, cfg, logPath string) (*daemonProc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	d := &daemonProc{cmd: exec.Command(bin, "run", "-config", cfg), log: logPath, done: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.Env = testenv.ChildEnv()
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		d.err = d.cmd.Wait()
		f.Close()
		close(d.done)
	}()
	return d, nil
}

// stop sends SIGTERM and waits; after 60 s it kills. It returns the exit
// error, or says that it had to kill.
func (d *daemonProc) stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.err
	case <-time.After(60 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return errors.New("the daemon did not stop within 60 s of SIGTERM: killed")
	}
}

// procRSS reads VmRSS and VmHWM (KiB) from /proc/pid/status.
func procRSS(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "VmRSS:" {
				rss = n
			} else {
				hwm = n
			}
		}
	}
	return rss, hwm, nil
}

// resetPeak sets VmHWM to the current VmRSS.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// cpuSeconds is utime+stime of /proc/pid/stat, in USER_HZ (100/s on Linux).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil
}

// sampler reads VmRSS every 100 ms until finish.
type sampler struct {
	t0      time.Time
	stop    chan struct{}
	done    chan struct{}
	samples []int64
}

func startSampler(pid int) *sampler {
	s := &sampler{t0: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if rss, _, err := procRSS(pid); err == nil {
				s.samples = append(s.samples, rss)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) finish() []int64 {
	close(s.stop)
	<-s.done
	return s.samples
}

func fileLen(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSummary returns, from offset on, each distinct warn, error or fatal
// message of the daemon's JSON log (and any non-JSON line, such as a
// panic) with its count and its first line, cut at 400 bytes.
func logSummary(path string, offset int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return []string{err.Error()}
	}
	count := map[string]int{}
	var order []string
	firstLine := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		var l struct{ Level, Message string }
		key := ""
		if json.Unmarshal([]byte(line), &l) != nil {
			key = "(not JSON) " + line
		} else if l.Level == "warn" || l.Level == "error" || l.Level == "fatal" {
			key = l.Level + ": " + l.Message
		}
		if key == "" {
			continue
		}
		if count[key]++; count[key] == 1 {
			order = append(order, key)
			firstLine[key] = line
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		line := firstLine[k]
		if len(line) > 400 {
			line = line[:400] + "…"
		}
		out = append(out, fmt.Sprintf("%d× `%s`", count[k], line))
	}
	return out
}

// slowest summarizes Redis's slow log: the longest command and how many
// took 1 s or more.
func slowest(ctx context.Context, rdb *redis.Client) string {
	log, err := rdb.SlowLogGet(ctx, -1).Result()
	if err != nil {
		return err.Error()
	}
	if len(log) == 0 {
		return "none ≥ 100 ms"
	}
	long, over1s := log[0], 0
	for _, l := range log {
		if l.Duration > long.Duration {
			long = l
		}
		if l.Duration >= time.Second {
			over1s++
		}
	}
	return fmt.Sprintf("%s %v; %d ≥ 1 s, %d ≥ 100 ms", long.Duration.Round(time.Millisecond), long.Args[:min(1, len(long.Args))], over1s, len(log))
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func mib(kib int64) string { return fmt.Sprintf("%.0f", float64(kib)/1024) }

func (m *memRun) report() string {
	var b strings.Builder
	rev, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	lease := "3s (default)"
	if m.o.leaseTTL > 0 {
		lease = m.o.leaseTTL.String()
	}
	fmt.Fprintf(&b, "Peak RSS of the cachesync daemon (child process, `go build ./cmd/cachesync` at %s) on private MariaDB and Redis, %d CPUs shared with them. "+
		"Peak = VmHWM after `echo 5 > /proc/PID/clear_refs` at the scenario's start; each scenario runs on a freshly restarted daemon that caught up. "+
		"Applied = a marker row written after it is in Redis. Daemon defaults (mysql.max_txn_changes 100000, sink.batch_changes 2000); ha.lease_ttl %s.\n\n",
		strings.TrimSpace(string(rev)), runtime.NumCPU(), lease)
	b.WriteString("| scenario | rows / bytes | peak RSS (MiB) | RSS before (MiB) | RSS after (MiB) | time to apply | target | daemon CPU (s) | load avg 1/5/15 m (at end) | slowest Redis command | check |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---|---:|---|---|---|\n")
	for _, r := range m.rows {
		target := cmp.Or(r.target, "–")
		if r.limitMiB > 0 && r.err == nil {
			target += map[bool]string{true: " ✔", false: " ✘"}[r.peak <= r.limitMiB<<10]
		}
		check := r.check
		if r.err != nil {
			check = "FAILED: " + strings.ReplaceAll(r.err.Error(), "\n", " ⏎ ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %.1f | %s | %s | %s |\n", r.name, r.size, mib(r.peak), mib(r.before), mib(r.after),
			r.apply.Round(time.Millisecond), target, r.cpu, r.load, r.slow, cmp.Or(check, "–"))
	}
	for _, r := range m.rows {
		fmt.Fprintf(&b, "\n**%s**", r.name)
		if r.note != "" {
			fmt.Fprintf(&b, ": %s", r.note)
		}
		b.WriteString(".\n")
		if r.pauseTo > 0 {
			b.WriteString(r.pauseDetail())
		}
		if len(r.logs) == 0 {
			b.WriteString("No warn or error lines in the daemon's log.\n")
		}
		for _, l := range r.logs {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	return b.String()
}

// pauseDetail is C's RSS before, during and after the pause, and a
// once-a-second timeline.
func (r *memRow) pauseDetail() string {
	from, to := int(r.pauseFrom/(100*time.Millisecond)), int(r.pauseTo/(100*time.Millisecond))
	from, to = min(from, len(r.samples)), min(to, len(r.samples))
	var during, catching int64
	for i, kib := range r.samples {
		if i >= from && i < to {
			during = max(during, kib)
		} else if i >= to {
			catching = max(catching, kib)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "RSS at the pause's start %s MiB; peak during the pause %s MiB; peak during the catch-up %s MiB; after the catch-up %s MiB (samples every 100 ms).\n",
		mib(r.before), mib(during), mib(catching), mib(r.after))
	b.WriteString("VmRSS once a second, MiB (| marks the pause):")
	for i := 0; i < len(r.samples); i += 10 {
		if i/10 == from/10 || i/10 == to/10 {
			b.WriteString(" |")
		}
		fmt.Fprintf(&b, " %s", mib(r.samples[i]))
	}
	b.WriteString("\n")
	return b.String()
}
