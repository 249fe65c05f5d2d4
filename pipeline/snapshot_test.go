package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
)

// TestSnapshotBesideWrites: a fresh pipeline snapshots 20k rows in small
// chunks while three writers change them (updates, deletes, inserts, rows
// moving between member sets). Chunks the stream overtook leave out the
// rows it changed; afterwards Redis equals MySQL.
func TestSnapshotBesideWrites(t *testing.T) {
	e := newEnv(t, nil, nil)
	rules := e.itemRules()
	e.exec(itemsTable)
	e.exec("INSERT INTO items (id, cat, name, price, stock, status) SELECT seq, seq % 5, CONCAT('item ', seq), seq / 100, seq % 1000, 'on_sale' FROM seq_1_to_20000")
	ws := []*workload{e.startWorkload(31, 20000), e.startWorkload(32, 20000), e.startWorkload(33, 20000)}
	ws[0].waitTxns(t, 20)
	r := e.start(rules, func(_ *binlog.Config, s *sink.Config) { s.BatchChanges = 300 })
	r.ready(t) // the snapshot is all in Redis
	ws[0].waitTxns(t, 50)
	var txns int64
	for _, w := range ws {
		txns += w.stop()
	}
	e.sync(r)
	e.checkConsistent(rules, "items")
	chunks := r.metric(t, "cachesync_snapshot_chunks_total")
	if chunks < 20000/300 {
		t.Errorf("%v chunks for 20000 rows in chunks of 300", chunks)
	}
	t.Logf("%d writer transactions; %v chunks, %v rows, %v rows superseded by the stream", txns, chunks,
		r.metric(t, "cachesync_snapshot_rows_total"), r.metric(t, "cachesync_snapshot_rows_superseded_total"))
}

// TestSnapshotRequest: a snapshot of one table, requested while the
// pipeline streams (cachesync snapshot -table), rewrites the keys its
// stateful rules own (two were lost here) while /readyz says snapshotting;
// a table without stateful rules is refused.
func TestSnapshotRequest(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	e.exec("INSERT INTO items (id, cat, name, price, stock, status) SELECT seq, seq % 5, CONCAT('item ', seq), seq, seq, 'on_sale' FROM seq_1_to_3000")
	r := e.start(rules, func(_ *binlog.Config, s *sink.Config) { s.BatchChanges = 200 })
	r.ready(t)
	before := r.metric(t, "cachesync_snapshot_chunks_total")
	for _, k := range []string{e.p + "json:7", e.p + "stock:2999"} { // one by one: two slots on a cluster
		if err := e.rdb.Del(ctx, k).Err(); err != nil {
			t.Fatal(err)
		}
	}

	if err := r.a.RequestSnapshot(ctx, e.schema+".nope"); err == nil || !strings.Contains(err.Error(), "no rewrite, mirror or member rule") {
		t.Errorf("RequestSnapshot of an unruled table = %v, want a refusal", err)
	}
	if err := r.a.RequestSnapshot(ctx, strings.ToUpper(e.schema)+".Items"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() error {
		if err := r.p.Ready(); err == nil || !strings.HasPrefix(err.Error(), "snapshotting") {
			return fmt.Errorf("Ready = %v, want snapshotting", err)
		}
		return nil
	}, 10*time.Second)
	r.ready(t)
	e.sync(r)
	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_snapshot_chunks_total") - before; n < 3000/200 {
		t.Errorf("%v chunks for the requested snapshot of 3000 rows in chunks of 200", n)
	}
}

// TestReadAheadBounded: while Redis refuses writes (CLIENT PAUSE), the
// pipeline stops reading the binlog once its read-ahead budget (1 MiB
// here) is taken, instead of queueing every transaction; the binlog
// connection survives the wait; once Redis is back, nothing is lost.
func TestReadAheadBounded(t *testing.T) {
	standaloneOnly(t, "it pauses a private Redis (CLIENT PAUSE); the read-ahead budget is the pipeline's, "+
		"the same whatever the Redis, and the standalone run covers it")
	rs := testenv.StartRedis(t) // private: it gets paused
	e := newEnv(t, nil, rs)
	ctx := context.Background()
	rules := e.itemRules()
	e.exec(itemsTable)
	r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.ReadAheadBytes, b.MaxTxnBytes = 1<<20, 1<<20 })
	r.ready(t)
	const txns, per = 40, 500
	if err := e.rdb.Do(ctx, "CLIENT", "PAUSE", "12000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	defer e.rdb.Do(ctx, "CLIENT", "UNPAUSE")
	for i := range txns {
		var vals []string
		for j := range per {
			id := 1 + i*per + j
			vals = append(vals, fmt.Sprintf("(%d, %d, 'item %d with a longer name to fill', 1.5, %d, 'on_sale')", id, id%5, id, id))
		}
		e.exec("INSERT INTO items (id, cat, name, price, stock, status) VALUES " + strings.Join(vals, ","))
	}
	time.Sleep(time.Second)
	read := r.metric(t, "cachesync_binlog_rows_total")
	held := r.metric(t, "cachesync_read_ahead_bytes")
	time.Sleep(2 * time.Second)
	if again := r.metric(t, "cachesync_binlog_rows_total"); again != read {
		t.Errorf("still reading while Redis is paused: %v rows, then %v", read, again)
	}
	if read >= txns*per {
		t.Errorf("read all %d rows while Redis was paused: the read-ahead is not bounded", int(read))
	}
	if held > 1<<20 {
		t.Errorf("read-ahead holds %v bytes, over its 1 MiB budget", held)
	}
	t.Logf("while Redis was paused: %v of %d rows read, %v bytes held", read, txns*per, held)
	if err := e.rdb.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	e.sync(r)
	e.checkConsistent(rules, "items")
	if n := r.metric(t, "cachesync_binlog_reconnects_total"); n != 0 {
		t.Errorf("%v binlog reconnects: the wait was taken for silence", n)
	}
}

// TestRuleChangeResnapshots: a rule added on a table whose snapshot is
// done makes the next leader snapshot that table again beside the stream,
// so rows the stream never touches get the new rule's keys; a restart
// with the same rules snapshots nothing.
func TestRuleChangeResnapshots(t *testing.T) {
	e := newEnv(t, nil, nil)
	tbl := e.schema + ".rc"
	first := []sink.RuleConfig{{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "j:{id}", Columns: []string{"id", "a"}}}
	e.exec("CREATE TABLE rc (id INT PRIMARY KEY, a INT NOT NULL)",
		"INSERT INTO rc VALUES (1, 1), (2, 2), (3, 3)")
	r := e.start(first, nil)
	r.ready(t)
	e.sync(r)
	e.checkConsistent(first, "rc")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	// Same rules: resumes, no snapshot.
	r = e.start(first, nil)
	r.ready(t)
	e.exec("UPDATE rc SET a = 10 WHERE id = 1")
	e.sync(r)
	if r.log.contains("snapshot: beginning") {
		t.Error("a restart with the same rules snapshotted")
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	// A mirror rule added: rows 2 and 3, untouched since, get its keys.
	second := append(first, sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: e.p + "m:{id}", Column: "a"})
	r = e.start(second, nil)
	r.ready(t)
	e.sync(r)
	e.checkConsistent(second, "rc")
	if !r.log.contains("snapshotting it again") {
		t.Error("the table with the new rule was not snapshotted again")
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}
