package main

// TestCrashSafety is the kill -9 acceptance test: the real daemon binary runs
// against private MariaDB and Redis servers while writers change rows and a
// killer SIGKILLs and restarts the daemon at random moments (also during its
// first snapshot). After the writers stop and the daemon caught up, every key
// the rules own must equal MySQL exactly, keys of deleted rows must be gone,
// and invalidated keys of changed rows must be gone.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

const (
	crashSchema    = "crash"
	itemIDs        = 40_000 // id universe of items
	itemFill       = 0.75   // share of it preloaded
	noteIDs        = 2_000
	groups         = 20
	writerCount    = 4
	minKills       = 12 // SIGKILLs while streaming
	snapshotKills  = 2  // SIGKILL attempts during the first snapshot
	minRowChanges  = 20_000
	minWorkload    = 10 * time.Second
	maxWorkload    = 90 * time.Second
	catchUpTimeout = 2 * time.Minute
	invFill        = "filled-by-app"
)

var statuses = []string{"active", "inactive", "hidden"}

// names holds awkward strings for the name column: JSON escaping, UTF-8,
// the empty string.
var names = []string{
	"plain", `say "hi"`, `back\slash`, "tab\there", "line\nbreak", "ctl\x01char",
	"üñíçødé 日本語", "", "emoji 🎉", "<html>&amp;",
}

func crashConfig(mysqlAddr, redisAddr string, serverID uint32, batchChanges int) string {
	return fmt.Sprintf(`mysql:
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
  batch_changes: %d
  rules:
    - table: crash.items
      kind: rewrite
      key: "item:{id}"
      format: json
      columns: [name, id, price, status, qty, grp]
    - table: crash.items
      kind: rewrite
      key: "itemh:{id}"
      format: hash
    - table: crash.items
      kind: mirror
      key: "qty:{id}"
      column: qty
    - table: crash.items
      kind: member
      key: "grp:{grp}"
      member: "{id}"
      when: {column: status, equals: active}
    - table: crash.notes
      kind: invalidate
      keys: ["inv:{id}"]
    - table: crash.markers
      kind: mirror
      key: "marker:{id}"
      column: v
`, mysqlAddr, serverID, redisAddr, batchChanges)
}

// jsonColumns is the rewrite rule's column list, in its order.
var jsonColumns = []string{"name", "id", "price", "status", "qty", "grp"}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	t0 := time.Now()
	e := newCrashEnv(t, 2000)
	db, rdb, d := e.db, e.rdb, e.d
	db.SetMaxOpenConns(writerCount + 4)
	tSetup := time.Since(t0)
	ctx := context.Background()

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// Writers run from before the first start to the end of the kill loop.
	wl := startWorkload(t, db, rdb, seed, rng, 0)
	defer wl.stop()
	werr, rowChanges, txns, notesOn := wl.werr, &wl.rows, &wl.txns, &wl.notesOn
	stopWriters := wl.stop

	// First start: kill it during the snapshot, then let a snapshot finish.
	tWork := time.Now()
	kills, snapKills := 0, 0
	for range snapshotKills {
		r := d.Start(t)
		if err := waitUntil(30*time.Second, func() bool {
			return r.LogHas("snapshot: beginning") || r.LogHas("snapshot: resuming") || snapshotDone(ctx, rdb) || r.Exited()
		}); err != nil || r.Exited() {
			t.Fatalf("run %d: snapshot did not start (%v)%s", r.N, err, r.Tail())
		}
		time.Sleep(time.Duration(20+rng.IntN(300)) * time.Millisecond)
		mid := !snapshotDone(ctx, rdb)
		r.Kill(t)
		kills++
		if mid {
			snapKills++
		}
	}
	r := d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return snapshotDone(ctx, rdb) || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d: the first snapshot did not finish (%v)%s", r.N, err, r.Tail())
	}
	t.Logf("first snapshot done after %d kills during it (%d mid-snapshot), %s after the first start; %s",
		kills, snapKills, time.Since(tWork).Round(time.Millisecond), r.Grep("snapshot: table read"))
	notesOn.Store(true) // from here on, every notes change is after the checkpoint

	// Kill loop.
	streamKills, flushes := 0, 0
	for {
		el := time.Since(tWork)
		if streamKills >= minKills && rowChanges.Load() >= minRowChanges && el >= minWorkload {
			break
		}
		if el > maxWorkload {
			t.Fatalf("workload ran %s: %d kills, %d row changes; want at least %d and %d", el, streamKills, rowChanges.Load(), minKills, minRowChanges)
		}
		select {
		case err := <-werr:
			t.Fatalf("writer: %v", err)
		case <-time.After(time.Duration(100+rng.IntN(700)) * time.Millisecond):
		}
		if r.Exited() {
			t.Fatalf("run %d exited on its own: %v%s", r.N, r.Err(), r.Tail())
		}
		r.Kill(t)
		kills++
		streamKills++
		if streamKills%4 == 0 { // a binlog rotation now and then
			mustExec(t, db, "FLUSH BINARY LOGS")
			flushes++
		}
		if rng.IntN(2) == 0 {
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		}
		r = d.Start(t)
	}
	stopWriters()
	select {
	case err := <-werr:
		t.Fatalf("writer: %v", err)
	default:
	}
	tWorkload := time.Since(tWork)

	// Catch up: a marker row written after everything else must arrive.
	tCatch := time.Now()
	if err := waitUntil(30*time.Second, func() bool { return r.LogHas("streaming binlog") || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d does not stream (%v)%s", r.N, err, r.Tail())
	}
	catchUp(t, db, rdb, r)
	tCatchUp := time.Since(tCatch)

	checkHTTP(t, r)

	mism, stats := compare(t, db, rdb, wl.kept())
	t.Logf("workload %s: %d row changes in %d transactions by %d writers; %d kills (%d during the first snapshot, %d mid-snapshot; %d while streaming), %d binlog rotations, %d daemon runs",
		tWorkload.Round(time.Millisecond), rowChanges.Load(), txns.Load(), writerCount, kills, snapshotKills, snapKills, streamKills, flushes, d.Runs())
	t.Logf("caught up %s after the writers stopped; set-up (build, servers) %s; checked %s", tCatchUp.Round(time.Millisecond), tSetup.Round(time.Millisecond), stats)
	t.Logf("mismatches: %d", len(mism))
	if len(mism) > 0 {
		t.Errorf("%d keys differ from MySQL; first ones:\n  %s", len(mism), strings.Join(mism[:min(len(mism), 25)], "\n  "))
		t.FailNow()
	}

	// Graceful shutdown: SIGTERM exits 0 with the checkpoint at the end of
	// the last transaction (the marker's).
	r.Term(t, termWithin)
	cp := rdb.HGetAll(ctx, "cachesync:checkpoint").Val()
	if file, pos := lastCommit(t, db); cp["file"] != file || cp["pos"] != pos {
		t.Errorf("checkpoint after SIGTERM = %v, want %s:%s (the end of the last transaction)", cp, file, pos)
	}

	// A restart resumes from the checkpoint: no snapshot, and streams.
	r = d.Start(t)
	if err := waitUntil(30*time.Second, func() bool { return r.LogHas("streaming binlog") || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d after SIGTERM did not stream (%v)%s", r.N, err, r.Tail())
	}
	if r.LogHas("snapshot") {
		t.Errorf("run %d after a graceful stop took a snapshot:%s", r.N, r.Tail())
	}
	t.Logf("restart after SIGTERM: %s", r.Grep("streaming binlog"))
	mustExec(t, db, "UPDATE markers SET v = 2 WHERE id = 1")
	if err := waitUntil(30*time.Second, func() bool { return rdb.Get(ctx, "marker:1").Val() == "2" }); err != nil {
		t.Fatalf("run %d after SIGTERM does not apply changes%s", r.N, r.Tail())
	}
	r.Term(t, termWithin)
	d.CheckLogs(t)
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
}

// TestKillDuringSnapshot kills the daemon (kill -9) 20 times while its
// first snapshot of 60k rows runs in chunks, changing rows between kills
// (deleting rows, moving rows out of member sets and changing primary keys
// of rows the snapshot already wrote). Every restart resumes after the
// last chunk in Redis, never from zero; the snapshot converges; /readyz,
// polled all along, never says 200 before the snapshot is all in Redis;
// afterwards every key equals MySQL.
func TestKillDuringSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	const rows, kills = 60_000, 20
	e := newCrashEnv(t, 100) // small chunks: the snapshot takes many calls
	ctx := context.Background()
	preloadSimple(t, e.db, rows)
	var lies atomic.Int64
	var cur atomic.Pointer[testenv.ChildRun]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // /readyz must not say 200 before the data is there
		for {
			select {
			case <-stop:
				return
			default:
			}
			if r := cur.Load(); r != nil {
				if code, _ := getReadyz(r); code == http.StatusOK && !snapshotDone(ctx, e.rdb) {
					lies.Add(1)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	defer func() { close(stop); wg.Wait() }()

	prev := ""
	for k := range kills {
		r := e.d.Start(t)
		cur.Store(r)
		// Let it read a few chunks past where the last run got.
		if err := waitUntil(60*time.Second, func() bool {
			p := progress(ctx, e.rdb)
			return r.Exited() || (p != "" && p != prev && rand.IntN(3) == 0)
		}); err != nil || r.Exited() {
			t.Fatalf("run %d: the snapshot did not move past %q (%v)%s", r.N, prev, err, r.Tail())
		}
		if snapshotDone(ctx, e.rdb) {
			t.Fatalf("run %d: the snapshot finished after %d kills: make it longer", r.N, k)
		}
		r.Kill(t)
		p := progress(ctx, e.rdb)
		if progressID(t, p) < progressID(t, prev) {
			t.Errorf("run %d: the snapshot went back from id %d to %d", r.N, progressID(t, prev), progressID(t, p))
		}
		if r.N > 1 && r.Grep("resuming after the last chunk") == "" {
			t.Errorf("run %d did not resume the snapshot%s", r.N, r.Tail())
		}
		prev = p
		// Change rows the snapshot may already have written.
		lo := k * 50
		mustExec(t, e.db, "DELETE FROM items WHERE id >= ? AND id < ? AND id % 4 = 0", lo, lo+50)
		mustExec(t, e.db, "UPDATE items SET status = 'inactive' WHERE id >= ? AND id < ? AND id % 4 = 1", lo, lo+50)
		mustExec(t, e.db, "UPDATE items SET grp = grp + 1 WHERE id >= ? AND id < ? AND id % 4 = 2", lo, lo+50)
		mustExec(t, e.db, "UPDATE items SET id = id + 100000, qty = NULL WHERE id >= ? AND id < ? AND id % 4 = 3", lo, lo+50)
	}
	r := e.d.Start(t)
	cur.Store(r)
	if err := waitUntil(120*time.Second, func() bool { return snapshotDone(ctx, e.rdb) || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d: the snapshot did not finish (%v)%s", r.N, err, r.Tail())
	}
	mustExec(t, e.db, "INSERT INTO markers (id, v) VALUES (1, 1)")
	if err := waitUntil(30*time.Second, func() bool { return e.rdb.Get(ctx, "marker:1").Val() == "1" }); err != nil {
		t.Fatalf("marker not applied%s", r.Tail())
	}
	if err := waitUntil(10*time.Second, func() bool { code, _ := getReadyz(r); return code == http.StatusOK }); err != nil {
		code, body := getReadyz(r)
		t.Errorf("/readyz %d %s after the snapshot finished", code, body)
	}
	if n := lies.Load(); n > 0 {
		t.Errorf("/readyz said 200 %d times while the snapshot was not all in Redis", n)
	}
	mism, stats := compare(t, e.db, e.rdb, nil)
	t.Logf("%d kills; checked %s; mismatches: %d", kills, stats, len(mism))
	if len(mism) > 0 {
		t.Fatalf("%d keys differ from MySQL after a snapshot killed %d times; first ones:\n  %s", len(mism), kills, strings.Join(mism[:min(len(mism), 25)], "\n  "))
	}
	r.Term(t, termWithin)
	e.d.CheckLogs(t)
}

// progress is the snapshot progress of crash.items ("" before it began).
func progress(ctx context.Context, rdb redis.UniversalClient) string {
	return rdb.HGet(ctx, ownKey(rdb, "snapshot:progress"), "crash.items").Val()
}

// progressID is the last id the snapshot progress p names (-1: none).
func progressID(t *testing.T, p string) int {
	t.Helper()
	after, ok := strings.CutPrefix(p, "at:")
	if !ok || after == "" {
		return -1
	}
	vals, err := binlog.ParseKey(after)
	if err != nil || len(vals) != 1 {
		t.Fatalf("snapshot progress %q: %v", p, err)
	}
	id, err := strconv.Atoi(vals[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// snapshotDone reports whether every table of the snapshot is in Redis.
func snapshotDone(ctx context.Context, rdb redis.UniversalClient) bool {
	h := rdb.HGetAll(ctx, ownKey(rdb, "snapshot:progress")).Val()
	for f, v := range h {
		if v != "done" && !strings.HasPrefix(f, "rules:") { // rules: the rules' fingerprint
			return false
		}
	}
	return len(h) > 0 && checkpointExists(ctx, rdb)
}

// TestRedisLossDuringSnapshot restarts Redis (without persistence: it comes
// back empty) while the daemon's first snapshot is half written. The daemon
// must notice that the rows it already wrote are gone and snapshot again,
// rather than complete the snapshot over missing keys.
func TestRedisLossDuringSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test: skipped in -short mode")
	}
	const rows = 60_000
	e := newCrashEnv(t, 200)
	ctx := context.Background()
	preloadSimple(t, e.db, rows)
	r := e.d.Start(t)
	deadline := time.Now().Add(60 * time.Second)
	for e.rdb.Exists(ctx, "item:0").Val() == 0 || snapshotDone(ctx, e.rdb) {
		if r.Exited() || time.Now().After(deadline) {
			t.Fatalf("snapshot did not start writing (exited: %v)%s", r.Exited(), r.Tail())
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.rs.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := e.rs.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(60*time.Second, func() bool { return snapshotDone(ctx, e.rdb) || r.Exited() }); err != nil || r.Exited() {
		t.Fatalf("run %d: the snapshot did not finish (%v)%s", r.N, err, r.Tail())
	}
	mustExec(t, e.db, "INSERT INTO markers (id, v) VALUES (1, 1)")
	if err := waitUntil(30*time.Second, func() bool { return e.rdb.Get(ctx, "marker:1").Val() == "1" }); err != nil {
		t.Fatalf("marker not applied%s", r.Tail())
	}
	mism, stats := compare(t, e.db, e.rdb, nil)
	t.Logf("checked %s; mismatches: %d", stats, len(mism))
	if len(mism) > 0 {
		t.Fatalf("%d keys differ from MySQL after Redis lost its data during the snapshot; first ones:\n  %s", len(mism), strings.Join(mism[:min(len(mism), 25)], "\n  "))
	}
	if line := r.Grep("redis lost its data"); line == "" {
		t.Errorf("run %d did not log that Redis lost its data%s", r.N, r.Tail())
	}
	r.Term(t, termWithin)
}

// preloadSimple inserts items 0..n-1: active, grp id%groups, qty id.
// workload is the writers of the crash schema: each changes rows of its own
// id partition in transactions of 1-20 row changes until stopped.
type workload struct {
	ws         []*writer
	rows, txns atomic.Int64
	notesOn    atomic.Bool // notes changes are made from here on
	werr       chan error  // a writer's error; it stops all of them
	cancel     func()
	wg         sync.WaitGroup
}

// startWorkload preloads items and notes, fills the application's inv:
// keys (every one must survive until its row changes) and starts the
// writers, each pausing pace after every transaction (0: as fast as
// MariaDB takes them); stop them with stop.
func startWorkload(t *testing.T, db *sql.DB, rdb redis.UniversalClient, seed uint64, rng *rand.Rand, pace time.Duration) *workload {
	t.Helper()
	ctx := context.Background()
	wl := &workload{werr: make(chan error, writerCount)}
	// Preload, and hand each writer the ids of its partition (id % writers).
	ws := make([]*writer, writerCount)
	for i := range ws {
		ws[i] = &writer{n: i, db: db, rng: rand.New(rand.NewPCG(seed, uint64(i+1))), items: map[int]bool{}, notes: map[int]bool{}, touched: map[int]bool{}}
	}
	var rows [][]any
	flush := func() {
		if len(rows) == 0 {
			return
		}
		q := "INSERT INTO items (id, name, qty, price, grp, status) VALUES " + strings.Repeat("(?,?,?,?,?,?),", len(rows))
		var args []any
		for _, r := range rows {
			args = append(args, r...)
		}
		mustExec(t, db, q[:len(q)-1], args...)
		rows = rows[:0]
	}
	for id := range itemIDs {
		if rng.Float64() < itemFill {
			rows = append(rows, append([]any{id}, randomItem(rng)...))
			ws[id%writerCount].items[id] = true
			if len(rows) == 1000 {
				flush()
			}
		}
	}
	flush()
	for id := range noteIDs {
		if rng.IntN(2) == 0 {
			mustExec(t, db, "INSERT INTO notes (id, body, rev) VALUES (?, ?, 0)", id, "note")
			ws[id%writerCount].notes[id] = true
		}
	}
	pipe := rdb.Pipeline()
	for id := range noteIDs {
		pipe.Set(ctx, "inv:"+strconv.Itoa(id), invFill, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	wl.cancel = cancel
	for _, w := range ws {
		w.rows, w.txns, w.notesOn, w.pace = &wl.rows, &wl.txns, &wl.notesOn, pace
		wl.wg.Go(func() {
			if err := w.run(wctx); err != nil {
				wl.werr <- err
				cancel()
			}
		})
	}
	wl.ws = ws
	return wl
}

// stop stops the writers and waits for them; calling it again is harmless.
func (wl *workload) stop() {
	wl.cancel()
	wl.wg.Wait()
}

// kept are the ids of notes rows no committed transaction changed: their
// inv: keys must still hold what the application filled.
func (wl *workload) kept() map[int]bool {
	kept := map[int]bool{}
	for id := range noteIDs {
		kept[id] = true
	}
	for _, w := range wl.ws {
		for id := range w.touched {
			delete(kept, id)
		}
	}
	return kept
}

func preloadSimple(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	for start := 0; start < n; start += 1000 {
		var args []any
		for id := start; id < min(start+1000, n); id++ {
			args = append(args, id, "n", id, "1.00", id%groups, "active")
		}
		mustExec(t, db, "INSERT INTO items (id, name, qty, price, grp, status) VALUES "+strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?),", len(args)/6), ","), args...)
	}
}

// writer changes rows of its own id partition (id % writerCount == n), so
// writers never wait for each other's locks, and it knows exactly which of
// its ids exist.
type writer struct {
	n       int
	db      *sql.DB
	rng     *rand.Rand
	items   map[int]bool // existing items ids of the partition
	notes   map[int]bool // existing notes ids of the partition
	touched map[int]bool // notes ids changed by committed transactions
	notesOn *atomic.Bool
	rows    *atomic.Int64
	txns    *atomic.Int64
	pace    time.Duration // pause after each transaction
}

func (w *writer) run(ctx context.Context) error {
	for ctx.Err() == nil {
		err := w.txn(ctx)
		if w.pace > 0 {
			time.Sleep(w.pace)
		}
		if err == nil || ctx.Err() != nil {
			continue
		}
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205) {
			continue // deadlock or lock wait timeout: rolled back, try another
		}
		return fmt.Errorf("writer %d: %w", w.n, err)
	}
	return nil
}

// txn runs one transaction of 1-20 row changes; the partition's state is
// updated only when it commits.
func (w *writer) txn(ctx context.Context) error {
	target := 1 + w.rng.IntN(20)
	tx, err := w.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit: no-op
	items := overlay{base: w.items, over: map[int]bool{}, universe: itemIDs}
	notes := overlay{base: w.notes, over: map[int]bool{}, universe: noteIDs}
	touched := map[int]bool{}
	notesOn := w.notesOn.Load()
	n := 0
	do := func(q string, args ...any) error {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		a, err := res.RowsAffected()
		n += int(a)
		return err
	}
	for n < target {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var err error
		switch p := w.rng.IntN(100); {
		case p < 30: // update one row, some columns
			id, ok := w.pick(items, true)
			if !ok {
				continue
			}
			item := randomItem(w.rng)
			var set []string
			var args []any
			for i, c := range []string{"name", "qty", "price", "grp", "status"} {
				if w.rng.IntN(2) == 0 || i == 4 && len(set) == 0 {
					set = append(set, c+" = ?")
					args = append(args, item[i])
				}
			}
			// An update that changes nothing writes no row event and
			// counts 0 rows affected: the loop simply goes on.
			err = do("UPDATE items SET "+strings.Join(set, ", ")+" WHERE id = ?", append(args, id)...)
		case p < 45: // insert one
			id, ok := w.pick(items, false)
			if !ok {
				continue
			}
			err = do("INSERT INTO items (id, name, qty, price, grp, status) VALUES (?,?,?,?,?,?)", append([]any{id}, randomItem(w.rng)...)...)
			items.over[id] = true
		case p < 55: // delete one
			id, ok := w.pick(items, true)
			if !ok {
				continue
			}
			err = do("DELETE FROM items WHERE id = ?", id)
			items.over[id] = false
		case p < 65: // update several rows in one statement
			ids := w.pickN(items, true, 2+w.rng.IntN(5))
			if len(ids) == 0 {
				continue
			}
			args := []any{statuses[w.rng.IntN(len(statuses))]}
			err = do("UPDATE items SET qty = IFNULL(qty, 0) + 1, status = ? WHERE id IN ("+marks(len(ids))+")", append(args, ids...)...)
		case p < 70: // delete several rows in one statement
			ids := w.pickN(items, true, 2+w.rng.IntN(4))
			if len(ids) == 0 {
				continue
			}
			err = do("DELETE FROM items WHERE id IN ("+marks(len(ids))+")", ids...)
			for _, id := range ids {
				items.over[id.(int)] = false
			}
		case p < 75: // insert several rows in one statement
			ids := w.pickN(items, false, 2+w.rng.IntN(4))
			if len(ids) == 0 {
				continue
			}
			var args []any
			for _, id := range ids {
				args = append(args, append([]any{id}, randomItem(w.rng)...)...)
				items.over[id.(int)] = true
			}
			err = do("INSERT INTO items (id, name, qty, price, grp, status) VALUES "+strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?),", len(ids)), ","), args...)
		case p < 80: // change a primary key: the old keys go, new ones come
			from, ok1 := w.pick(items, true)
			to, ok2 := w.pick(items, false)
			if !ok1 || !ok2 {
				continue
			}
			err = do("UPDATE items SET id = ? WHERE id = ?", to, from)
			items.over[from], items.over[to] = false, true
		default: // notes: invalidate rule
			if !notesOn {
				continue
			}
			exists := w.rng.IntN(2) == 0
			id, ok := w.pick(notes, exists)
			if !ok {
				continue
			}
			switch {
			case !exists:
				err = do("INSERT INTO notes (id, body, rev) VALUES (?, ?, 0)", id, "new")
				notes.over[id] = true
			case w.rng.IntN(3) == 0:
				err = do("DELETE FROM notes WHERE id = ?", id)
				notes.over[id] = false
			default:
				err = do("UPDATE notes SET rev = rev + 1, body = ? WHERE id = ?", names[w.rng.IntN(len(names))], id)
			}
			touched[id] = true
		}
		if err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	items.commit()
	notes.commit()
	for id := range touched {
		w.touched[id] = true
	}
	w.rows.Add(int64(n))
	w.txns.Add(1)
	return nil
}

// overlay is a transaction's view of a partition's existing ids.
type overlay struct {
	base, over map[int]bool
	universe   int // ids are 0..universe-1
}

func (o overlay) has(id int) bool {
	if v, ok := o.over[id]; ok {
		return v
	}
	return o.base[id]
}

func (o overlay) commit() {
	for id, v := range o.over {
		if v {
			o.base[id] = true
		} else {
			delete(o.base, id)
		}
	}
}

// pick returns a random id of the partition that exists (or not).
func (w *writer) pick(o overlay, exists bool) (int, bool) {
	for range 50 {
		id := w.rng.IntN(o.universe/writerCount)*writerCount + w.n
		if o.has(id) == exists {
			return id, true
		}
	}
	return 0, false
}

// pickN returns up to n distinct ids that exist (or not), as []any.
func (w *writer) pickN(o overlay, exists bool, n int) []any {
	seen := map[int]bool{}
	var ids []any
	for range 4 * n {
		id, ok := w.pick(o, exists)
		if ok && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
			if len(ids) == n {
				break
			}
		}
	}
	return ids
}

func marks(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// randomItem returns name, qty, price, grp, status; nil is NULL.
func randomItem(rng *rand.Rand) []any {
	var name, qty, price, grp any
	if rng.IntN(20) != 0 {
		name = names[rng.IntN(len(names))]
		if rng.IntN(2) == 0 {
			name = fmt.Sprintf("%s #%d", name, rng.IntN(1e6))
		}
	}
	if rng.IntN(20) != 0 {
		qty = rng.IntN(2000) - 100
	}
	if rng.IntN(20) != 0 {
		cents := rng.IntN(10_000_000) - 50_000
		sign := ""
		if cents < 0 {
			sign, cents = "-", -cents
		}
		price = fmt.Sprintf("%s%d.%02d", sign, cents/100, cents%100)
	}
	if rng.IntN(30) != 0 {
		grp = rng.IntN(groups)
	}
	return []any{name, qty, price, grp, statuses[rng.IntN(len(statuses))]}
}

// compare checks every key in Redis against MySQL; kept are the notes ids
// whose inv:{id} must still hold invFill (all other inv keys must be gone).
// It returns one line per mismatch and a summary of what was checked.
func compare(t *testing.T, db *sql.DB, rdb redis.UniversalClient, kept map[int]bool) ([]string, string) {
	t.Helper()
	ctx := context.Background()
	type want struct {
		typ  string // string, hash, set
		str  string
		hash map[string]string
		set  []string
	}
	expect := map[string]*want{}
	rows, err := db.Query("SELECT id, name, qty, price, grp, status FROM items")
	if err != nil {
		t.Fatal(err)
	}
	cols := []string{"id", "name", "qty", "price", "grp", "status"}
	numeric := map[string]bool{"id": true, "qty": true, "price": true, "grp": true}
	nItems := 0
	members := map[string][]string{}
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		nItems++
		row := map[string]sql.NullString{}
		h := map[string]string{}
		for i, c := range cols {
			row[c] = vals[i]
			if vals[i].Valid {
				h[c] = vals[i].String
			}
		}
		id := row["id"].String
		var js strings.Builder
		js.WriteByte('{')
		for i, c := range jsonColumns {
			if i > 0 {
				js.WriteByte(',')
			}
			js.WriteString(jsonString(c) + ":")
			switch v := row[c]; {
			case !v.Valid:
				js.WriteString("null")
			case numeric[c]:
				js.WriteString(v.String)
			default:
				js.WriteString(jsonString(v.String))
			}
		}
		js.WriteByte('}')
		expect["item:"+id] = &want{typ: "string", str: js.String()}
		expect["itemh:"+id] = &want{typ: "hash", hash: h}
		if row["qty"].Valid {
			expect["qty:"+id] = &want{typ: "string", str: row["qty"].String}
		}
		if row["grp"].Valid && row["status"].String == "active" {
			members["grp:"+row["grp"].String] = append(members["grp:"+row["grp"].String], id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	for k, m := range members {
		slices.Sort(m)
		expect[k] = &want{typ: "set", set: m}
	}
	var mv string
	if err := db.QueryRow("SELECT v FROM markers WHERE id = 1").Scan(&mv); err != nil {
		t.Fatal(err)
	}
	expect["marker:1"] = &want{typ: "string", str: mv}
	for id := range kept {
		expect["inv:"+strconv.Itoa(id)] = &want{typ: "string", str: invFill}
	}

	// Every key in Redis that is not cachesync's own.
	var keys []string
	if err := scanKeys(ctx, rdb, func(k string) {
		if !strings.HasPrefix(k, "cachesync:") {
			keys = append(keys, k)
		}
	}); err != nil {
		t.Fatal(err)
	}
	var mism []string
	bad := func(format string, args ...any) { mism = append(mism, fmt.Sprintf(format, args...)) }
	present := map[string]bool{}
	for _, k := range keys {
		present[k] = true
		if expect[k] == nil {
			switch {
			case strings.HasPrefix(k, "inv:"):
				bad("%s: present, but notes row %s changed (invalidate rule did not delete it)", k, k[4:])
			default:
				bad("%s: present, but no such row / member set in MySQL (stale key)", k)
			}
		}
	}
	for k := range expect {
		if !present[k] {
			bad("%s: missing", k)
		}
	}
	// Compare values of the keys present in both, pipelined.
	var check []string
	for _, k := range keys {
		if expect[k] != nil {
			check = append(check, k)
		}
	}
	slices.Sort(check)
	for start := 0; start < len(check); start += 1000 {
		chunk := check[start:min(start+1000, len(check))]
		pipe := rdb.Pipeline()
		typs := make([]*redis.StatusCmd, len(chunk))
		cmds := make([]redis.Cmder, len(chunk))
		for i, k := range chunk {
			typs[i] = pipe.Type(ctx, k)
			switch expect[k].typ {
			case "string":
				cmds[i] = pipe.Get(ctx, k)
			case "hash":
				cmds[i] = pipe.HGetAll(ctx, k)
			case "set":
				cmds[i] = pipe.SMembers(ctx, k)
			}
		}
		_, _ = pipe.Exec(ctx) // errors (WRONGTYPE) are checked per command
		for i, k := range chunk {
			w := expect[k]
			if got := typs[i].Val(); got != w.typ {
				bad("%s: type %s, want %s", k, got, w.typ)
				continue
			}
			switch c := cmds[i].(type) {
			case *redis.StringCmd:
				if c.Val() != w.str {
					bad("%s: got %q, want %q", k, c.Val(), w.str)
				}
			case *redis.MapStringStringCmd:
				if !mapsEqual(c.Val(), w.hash) {
					bad("%s: got %v, want %v", k, c.Val(), w.hash)
				}
			case *redis.StringSliceCmd:
				got := c.Val()
				slices.Sort(got)
				if !slices.Equal(got, w.set) {
					extra, miss := setDiff(got, w.set), setDiff(w.set, got)
					bad("%s: %d members, want %d; extra %v, missing %v", k, len(got), len(w.set), head(extra), head(miss))
				}
			}
		}
	}
	slices.Sort(mism)
	stats := fmt.Sprintf("%d keys against %d items rows, %d member sets, %d inv keys kept",
		len(keys), nItems, len(members), len(kept))
	return mism, stats
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// setDiff returns the elements of sorted a that are not in sorted b.
func setDiff(a, b []string) []string {
	var d []string
	for _, x := range a {
		if _, ok := slices.BinarySearch(b, x); !ok {
			d = append(d, x)
		}
	}
	return d
}

func head(s []string) []string { return s[:min(len(s), 10)] }

// jsonString quotes s as JSON with the minimal escapes the JSON grammar
// needs (", \, control characters; \n \r \t by name), leaving all other
// characters, including non-ASCII and <>&, as they are.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ownKey names the daemon's key name (see package keyspace) with the
// configuration of the crash tests: the default prefix, and on a cluster
// the default source.
func ownKey(rdb redis.UniversalClient, name string) string {
	if _, ok := rdb.(*redis.ClusterClient); ok {
		return "cachesync:{main}:" + name
	}
	return "cachesync:" + name
}

// scanKeys calls fn with every key, of every master on a cluster.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, fn func(string)) error {
	var mu sync.Mutex
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, "*", 5000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			fn(iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, scan)
	}
	return scan(ctx, rdb.(*redis.Client))
}

func checkpointExists(ctx context.Context, rdb redis.UniversalClient) bool {
	n, err := rdb.Exists(ctx, ownKey(rdb, "checkpoint")).Result()
	return err == nil && n == 1
}

// lastCommit returns the binlog position after the last transaction of
// the current binlog file. (Events that are no transaction, such as
// MariaDB's Binlog_checkpoint, may follow it.)
func lastCommit(t *testing.T, db *sql.DB) (file, pos string) {
	t.Helper()
	var skip sql.NullString
	if err := db.QueryRow("SHOW MASTER STATUS").Scan(&file, &skip, &skip, &skip); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("SHOW BINLOG EVENTS IN '" + file + "'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, typ, info string
		var at, server, end int64
		if err := rows.Scan(&name, &at, &typ, &server, &end, &info); err != nil {
			t.Fatal(err)
		}
		if typ == "Xid" || typ == "Query" && info == "COMMIT" {
			pos = strconv.FormatInt(end, 10)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return file, pos
}

// checkHTTP requires the run's admin listener (at the address it logged)
// to answer /livez, /healthz, /readyz (ready: the daemon streams) and
// /metrics, and its public listener not to serve them.
func checkHTTP(t *testing.T, r *testenv.ChildRun) {
	t.Helper()
	checkLogLines(t, r)
	addr, public := listenAddr(r, "admin"), listenAddr(r, "http")
	if addr == "" || public == "" {
		t.Errorf("run %d: no \"admin listening\" or \"http listening\" log line with the address%s", r.N, r.Tail())
		return
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Errorf("GET %s: %v", path, err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/livez", "/healthz"} {
		if code, body := get(p); code != http.StatusOK {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
	var code int
	var body string
	_ = waitUntil(10*time.Second, func() bool { code, body = get("/readyz"); return code == http.StatusOK })
	if code != http.StatusOK || !strings.Contains(body, `"ready":true`) {
		t.Errorf("/readyz of a caught-up daemon: %d %s", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "cachesync_sink_transactions_total") {
		t.Errorf("/metrics: %d, %d bytes, no cachesync_sink_transactions_total", code, len(body))
	}
	for _, p := range []string{"/metrics", "/readyz", "/livez"} {
		resp, err := http.Get("http://" + public + p)
		if err != nil {
			t.Errorf("GET %s on the public listener: %v", p, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the public listener: %d, want 404 (admin listener only)", p, resp.StatusCode)
		}
	}
}

// catchUp writes the marker row (id 1, v 1) after everything else and
// waits until the run applied it; it fails the test with a diagnosis if
// the run exits or does not within catchUpTimeout.
func catchUp(t *testing.T, db *sql.DB, rdb redis.UniversalClient, r *testenv.ChildRun) {
	t.Helper()
	mustExec(t, db, "INSERT INTO markers (id, v) VALUES (1, 1)")
	if err := waitUntil(catchUpTimeout, func() bool { return rdb.Get(context.Background(), "marker:1").Val() == "1" || r.Exited() }); err != nil || r.Exited() {
		t.Errorf("run %d did not catch up within %s (exited: %v)", r.N, catchUpTimeout, r.Exited())
		diagnose(t, db, rdb, r)
		t.FailNow()
	}
}

// listenAddr is the address the run's listener ("http" or "admin") logged
// ("" before it did).
// checkLogLines requires every complete line of the logs of r and of the
// runs before it (killed ones too) to be one JSON object with at most one
// "component" key: no plain-text lines from the drivers, no component
// tagged twice.
func checkLogLines(t *testing.T, r *testenv.ChildRun) {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(filepath.Dir(r.Log), "run-*.log"))
	if err != nil || len(logs) == 0 {
		t.Fatalf("run logs beside %s: %v", r.Log, err)
	}
	for _, name := range logs {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(data), "\n")
		for _, line := range lines[:len(lines)-1] { // the last is cut by a kill, or empty
			if !json.Valid([]byte(line)) {
				t.Errorf("%s: log line is not JSON: %q", name, line)
			} else if n := strings.Count(line, `"component":`); n > 1 {
				t.Errorf("%s: log line has %d component keys: %s", name, n, line)
			}
		}
	}
}

func listenAddr(r *testenv.ChildRun, listener string) string {
	var addr string
	for _, line := range strings.Split(r.Grep(`"`+listener+` listening"`), "\n") {
		var m struct{ Addr string }
		if json.Unmarshal([]byte(line), &m) == nil {
			addr = m.Addr
		}
	}
	return addr
}

// diagnose logs what helps to understand a daemon that does not catch up:
// the server's binlog position and replication threads, the checkpoint,
// and the daemon's goroutines (SIGQUIT makes a Go program print them).
func diagnose(t *testing.T, db *sql.DB, rdb redis.UniversalClient, r *testenv.ChildRun) {
	t.Helper()
	file, pos := lastCommit(t, db)
	t.Logf("last commit in the binlog: %s:%s; checkpoint: %v", file, pos, rdb.HGetAll(context.Background(), ownKey(rdb, "checkpoint")).Val())
	if rows, err := db.Query("SELECT ID, USER, COMMAND, TIME, IFNULL(STATE, ''), IFNULL(INFO, '') FROM information_schema.PROCESSLIST"); err == nil {
		for rows.Next() {
			var id, tm int64
			var user, cmd, state, info string
			if rows.Scan(&id, &user, &cmd, &tm, &state, &info) == nil {
				t.Logf("processlist: %d %s %s %ds %q %q", id, user, cmd, tm, state, info)
			}
		}
		rows.Close()
	}
	if !r.Exited() {
		_ = r.Signal(syscall.SIGQUIT)
		select {
		case <-r.Done():
		case <-time.After(5 * time.Second):
		}
	}
	b, _ := os.ReadFile(r.Log)
	t.Logf("log of run %d (%s):\n%s", r.N, r.Log, b[max(0, len(b)-60_000):])
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}

// termWithin is how long a graceful stop of the daemon may take.
const termWithin = 60 * time.Second

// crashEnv is the daemon binary with private MariaDB and Redis servers,
// the crash schema and a configuration file.
type crashEnv struct {
	bin string
	my  *testenv.MariaDB
	rs  *testenv.Redis
	db  *sql.DB
	rdb *redis.Client
	d   *testenv.Child
	dir string
}

// createCrashTables creates the tables crashConfig's rules name.
func createCrashTables(t *testing.T, db *sql.DB) {
	t.Helper()
	mustExec(t, db, `CREATE TABLE items (
		id INT PRIMARY KEY, name VARCHAR(64) NULL, qty INT NULL, price DECIMAL(10,2) NULL,
		grp INT NULL, status VARCHAR(16) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`)
	mustExec(t, db, `CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(64) NOT NULL, rev INT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`)
	mustExec(t, db, `CREATE TABLE markers (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB`)
}

func newCrashEnv(t *testing.T, batchChanges int) *crashEnv {
	t.Helper()
	bin := testenv.BuildCachesync(t)
	my := testenv.StartMariaDB(t)
	rs := testenv.StartRedis(t)
	e := &crashEnv{bin: bin, my: my, rs: rs, db: my.DB(t, crashSchema), rdb: redis.NewClient(&redis.Options{Addr: rs.Addr()})}
	t.Cleanup(func() { e.rdb.Close() })
	createCrashTables(t, e.db)
	// Daemon logs stay on disk when the test fails.
	var err error
	if e.dir, err = os.MkdirTemp("", "cachesync-crash-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon config and logs kept in %s", e.dir)
		} else {
			os.RemoveAll(e.dir)
		}
	})
	cfg := filepath.Join(e.dir, "cachesync.yaml")
	serverID := uint32(1000 + rand.N(1<<30))
	if err := os.WriteFile(cfg, []byte(crashConfig(my.Addr(), rs.Addr(), serverID, batchChanges)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.d = &testenv.Child{Bin: bin, Config: cfg, Dir: e.dir}
	t.Cleanup(e.d.KillCurrent) // registered last: runs before the servers go
	return e
}
