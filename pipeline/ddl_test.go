package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/sink"
)

// ddlTable tracks, for the table evolving under TestDDLAddColumn, which
// column layout each row was last written with.
type ddlTable struct {
	mu      sync.Mutex
	layouts [][]string // layout i: columns after i ALTERs
	// started and finished count ALTERs begun and completed. A write that
	// began after k ALTERs finished and committed before ALTER k'+1 started
	// was written with a layout in [k, k'].
	started, finished atomic.Int32
	lastWrite         map[int][2]int32 // id -> possible layouts of its last write
}

func (d *ddlTable) alter(t *testing.T, e *env, stmt string, layout []string) {
	t.Helper()
	d.mu.Lock()
	d.layouts = append(d.layouts, layout)
	d.mu.Unlock()
	d.started.Add(1)
	e.exec(stmt)
	d.finished.Add(1)
}

func (d *ddlTable) stmt(id int, r *rand.Rand) string {
	if r.IntN(12) == 0 {
		return fmt.Sprintf("DELETE FROM ddl WHERE id = %d", id)
	}
	d.mu.Lock()
	layout := d.layouts[d.finished.Load()]
	d.mu.Unlock()
	var cols, vals, upd []string
	for _, c := range layout {
		var v string
		switch c {
		case "id":
			v = fmt.Sprint(id)
		case "b", "y":
			v = fmt.Sprintf("'%s%d'", c, r.IntN(1000))
			if r.IntN(6) == 0 {
				v = "NULL"
			}
		case "c":
			v = fmt.Sprintf("%d.%02d", r.IntN(10000), r.IntN(100))
		default: // a, x, z, w: integers
			v = fmt.Sprint(r.IntN(2000) - 1000)
		}
		cols, vals = append(cols, c), append(vals, v)
		if c != "id" {
			upd = append(upd, fmt.Sprintf("%s = VALUES(%s)", c, c))
		}
	}
	return fmt.Sprintf("INSERT INTO ddl (%s) VALUES (%s) ON DUPLICATE KEY UPDATE %s",
		strings.Join(cols, ", "), strings.Join(vals, ", "), strings.Join(upd, ", "))
}

// exec runs one random write on row id and records its possible layouts.
func (d *ddlTable) exec(e *env, id int, r *rand.Rand) error {
	lo := d.finished.Load()
	if _, err := e.db.Exec(d.stmt(id, r)); err != nil {
		return err
	}
	hi := d.started.Load()
	d.mu.Lock()
	d.lastWrite[id] = [2]int32{lo, hi}
	d.mu.Unlock()
	return nil
}

// TestDDLAddColumn: columns added mid-stream — first, between existing
// columns and last, with the pipeline stopped (so it reads rows written
// before an ALTER after the ALTER happened) and running (while another
// session writes) — never shift values between columns. Every row's JSON
// equals MySQL's row under the layout it was written with.
func TestDDLAddColumn(t *testing.T) {
	const ids = 60
	e := newEnv(t, nil, nil)
	tbl := e.schema + ".ddl"
	rules := []sink.RuleConfig{
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "all:{id}"}, // every column, as the binlog names them
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "fix:{id}", Columns: []string{"id", "a", "b", "c"}},
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "h:{id}", Format: "hash"},
		{Table: tbl, Kind: sink.KindMirror, Key: e.p + "b:{id}", Column: "b"},
	}
	d := &ddlTable{lastWrite: map[int][2]int32{}}
	d.layouts = [][]string{{"id", "a", "b", "c"}}
	e.exec("CREATE TABLE ddl (id INT PRIMARY KEY, a INT, b VARCHAR(32), c DECIMAL(8,2))")
	rnd := rand.New(rand.NewPCG(11, 12))
	writes := func(n int) {
		t.Helper()
		for range n {
			if err := d.exec(e, 1+rnd.IntN(ids), rnd); err != nil {
				t.Fatal(err)
			}
		}
	}
	writes(30) // snapshot material

	r := e.start(rules, nil)
	r.ready(t)
	writes(100)
	e.sync(r)
	d.check(t, e, rules)

	// Pipeline down: rows, ALTER, rows, ALTER, rows. On restart it reads
	// rows older than the live schema.
	if err := r.stop(t); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	writes(50)
	d.alter(t, e, "ALTER TABLE ddl ADD COLUMN x INT FIRST", []string{"x", "id", "a", "b", "c"})
	writes(50)
	d.alter(t, e, "ALTER TABLE ddl ADD COLUMN y VARCHAR(16) AFTER a", []string{"x", "id", "a", "y", "b", "c"})
	writes(50)

	r = e.start(rules, nil)
	// Pipeline up, a second session writing while ALTERs run.
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		r2 := rand.New(rand.NewPCG(13, 14))
		for range 300 {
			if err := d.exec(e, 1+r2.IntN(ids), r2); err != nil {
				werr = err
				return
			}
		}
	}()
	writes(40)
	d.alter(t, e, "ALTER TABLE ddl ADD COLUMN z INT", []string{"x", "id", "a", "y", "b", "c", "z"})
	writes(40)
	d.alter(t, e, "ALTER TABLE ddl ADD COLUMN w INT NOT NULL DEFAULT 7 AFTER id", []string{"x", "id", "w", "a", "y", "b", "c", "z"})
	writes(40)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	e.sync(r)
	d.check(t, e, rules)
}

// check compares Redis with MySQL: the fixed-column rules exactly, the
// all-column rules under the layout(s) each row may have been written with.
func (d *ddlTable) check(t *testing.T, e *env, rules []sink.RuleConfig) {
	t.Helper()
	rows := readRows(t, e.db, "ddl")
	x := expect(rules, rows)
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, row := range rows {
		var n int
		fmt.Sscan(id, &n)
		lw, ok := d.lastWrite[n]
		if !ok {
			t.Fatalf("row %s in MySQL was never written", id)
		}
		var jsons []string
		var hashes []map[string]string
		for l := lw[0]; l <= lw[1]; l++ {
			jsons = append(jsons, row.jsonOf(d.layouts[l]))
			hashes = append(hashes, row.hashOf(d.layouts[l]))
		}
		k := e.p + "all:" + id
		x.strings[k], x.alt[k] = jsons[0], jsons[1:]
		k = e.p + "h:" + id
		x.hashes[k], x.altHash[k] = hashes[0], hashes[1:]
	}
	if err := x.check(context.Background(), e.rdb); err != nil {
		t.Fatal(err)
	}
}

// TestDDLDropColumnStops: dropping a column a rule uses stops the pipeline
// with ErrRule at the first row that no longer fits, without moving the
// checkpoint past the last good transaction; a restart with the same rules
// stops again (nothing is skipped), fixed rules carry on from there.
func TestDDLDropColumnStops(t *testing.T) {
	e := newEnv(t, nil, nil)
	tbl := e.schema + ".dd"
	fixed := []sink.RuleConfig{{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "j:{id}", Columns: []string{"id", "a"}}}
	rules := append([]sink.RuleConfig{{Table: tbl, Kind: sink.KindMirror, Key: e.p + "b:{id}", Column: "b"}}, fixed...)
	e.exec("CREATE TABLE dd (id INT PRIMARY KEY, a INT NOT NULL, b VARCHAR(16))",
		"INSERT INTO dd VALUES (1, 1, 'one'), (2, 2, 'two')")
	r := e.start(rules, nil)
	r.ready(t)
	e.exec("UPDATE dd SET a = 10 WHERE id = 1")
	e.sync(r)
	good := e.position()
	goodVer, _ := good.Version()
	e.checkConsistent(rules, "dd")

	e.exec("ALTER TABLE dd DROP COLUMN b")
	e.exec("UPDATE dd SET a = 20 WHERE id = 1")
	bad := e.position()
	badVer, _ := bad.Version()
	e.exec("UPDATE dd SET a = 30 WHERE id = 2")

	waitForStop := func(r *run) error {
		t.Helper()
		waitFor(t, func() error {
			select {
			case <-r.done:
				return nil
			default:
				return errors.New("pipeline still running after a column its rule uses was dropped")
			}
		}, 20*time.Second)
		return r.err
	}
	err := waitForStop(r)
	if !errors.Is(err, sink.ErrRule) {
		t.Fatalf("Run = %v, want an error wrapping sink.ErrRule", err)
	}
	for _, want := range []string{`"b"`, tbl} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	cp, _ := e.checkpoint()
	if cp.Version < goodVer || cp.Version >= badVer {
		t.Errorf("checkpoint %s: want at or after the last good transaction (%s) and before the failing one (ending at %s)", cp.Pos, good, bad)
	}
	// The operator resumes from what the error names: the stored
	// checkpoint, not the failing transaction's end (that would skip it).
	if want := "stored checkpoint " + cp.Pos.String(); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the %s", err, want)
	}
	if v, _ := e.rdb.Get(context.Background(), e.p+"j:1").Result(); v != `{"id":1,"a":10}` {
		t.Errorf("j:1 = %s: the failing transaction was partly applied", v)
	}

	// Same rules again: the daemon refuses to start (CheckSchema), and the
	// pipeline itself, started anyway, stops at the same place.
	if err := mustCompile(t, rules).CheckSchema(context.Background(), e.pdb); err == nil || !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("CheckSchema after the DROP = %v, want an error naming column b", err)
	}
	e.noSchemaCheck = true
	r = e.start(rules, nil)
	if err := waitForStop(r); !errors.Is(err, sink.ErrRule) {
		t.Fatalf("restart with the same rules: Run = %v, want sink.ErrRule", err)
	}
	if cp2, _ := e.checkpoint(); cp2.Version >= badVer {
		t.Errorf("checkpoint moved past the failing transaction to %s", cp2.Pos)
	} else if want := "stored checkpoint " + cp2.Pos.String(); !strings.Contains(r.err.Error(), want) {
		t.Errorf("restart: error %q does not name the %s", r.err, want)
	}
	e.noSchemaCheck = false
	// Fixed rules resume from the checkpoint and apply what was held back.
	r = e.start(fixed, nil)
	e.sync(r)
	e.checkConsistent(fixed, "dd")
	if v, _ := e.rdb.Get(context.Background(), e.p+"j:2").Result(); v != `{"id":2,"a":30}` {
		t.Errorf("j:2 = %s after resuming, want a = 30", v)
	}
	if r.log.contains("snapshot: beginning, beside the stream") {
		t.Error("resumed with a snapshot instead of from the checkpoint")
	}
	// The rule changed since the table's snapshot: its keys are read again
	// beside the stream, so rows the stream did not touch get the new form.
	if !r.log.contains("snapshotting it again") {
		t.Error("the changed rule's table was not snapshotted again")
	}
}

func mustCompile(t *testing.T, rules []sink.RuleConfig) *sink.Rules {
	t.Helper()
	rs, err := sink.CompileRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
