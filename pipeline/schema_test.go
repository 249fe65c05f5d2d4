package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/sink"
)

// TestCheckSchema: a rule naming a column or table that does not exist is
// a start-up error naming both; names are case-insensitive.
func TestCheckSchema(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.exec("CREATE TABLE Goods (goodsId INT PRIMARY KEY, Stock INT, status VARCHAR(8), l1 VARCHAR(8) CHARACTER SET latin1, " +
		"bin VARBINARY(8), legacy VARCHAR(8) CHARACTER SET gbk)")
	tbl := e.schema + ".goods"
	good := []sink.RuleConfig{
		{Table: e.schema + ".GOODS", Kind: sink.KindInvalidate, Keys: []string{"g:{GOODSID}"}},
		{Table: tbl, Kind: sink.KindRewrite, Key: "j:{goodsid}", Columns: []string{"goodsId", "stock"}},
		{Table: tbl, Kind: sink.KindMirror, Key: "s:{goodsId}", Column: "stock"},
		{Table: tbl, Kind: sink.KindMember, Key: "on", Member: "{goodsId}", When: &sink.Condition{Column: "Status", Equals: "on"}},
		{Table: tbl, Kind: sink.KindRewrite, Key: "h:{bin}", Format: "hash", Columns: []string{"l1", "bin"}},
	}
	ctx := context.Background()
	if err := mustCompile(t, good).CheckSchema(ctx, e.pdb); err != nil {
		t.Fatalf("CheckSchema of fitting rules: %v", err)
	}
	for _, tc := range []struct {
		name string
		rule sink.RuleConfig
		want []string
	}{
		{"mirror column", sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: "s:{goodsId}", Column: "stok"}, []string{`"stok"`, tbl}},
		{"key template", sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: "s:{id}", Column: "stock"}, []string{`"id"`, tbl}},
		{"invalidate key", sink.RuleConfig{Table: tbl, Kind: sink.KindInvalidate, Keys: []string{"a:{goodsId}", "b:{sku}"}}, []string{`"sku"`, tbl}},
		{"rewrite columns", sink.RuleConfig{Table: tbl, Kind: sink.KindRewrite, Key: "j:{goodsId}", Columns: []string{"goodsId", "price"}}, []string{`"price"`, tbl}},
		{"member template", sink.RuleConfig{Table: tbl, Kind: sink.KindMember, Key: "on", Member: "{sku}"}, []string{`"sku"`, tbl}},
		{"when column", sink.RuleConfig{Table: tbl, Kind: sink.KindMember, Key: "on", Member: "{goodsId}", When: &sink.Condition{Column: "state", Equals: "on"}}, []string{`"state"`, tbl}},
		{"table", sink.RuleConfig{Table: e.schema + ".good", Kind: sink.KindMirror, Key: "s:{goodsId}", Column: "stock"}, []string{e.schema + ".good", "does not exist"}},
		{"schema", sink.RuleConfig{Table: "nosuchdb.goods", Kind: sink.KindMirror, Key: "s:{goodsId}", Column: "stock"}, []string{"nosuchdb.goods", "does not exist"}},
		// Text the binlog holds in another encoding than the snapshot reads.
		{"charset of a mirror", sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: "s:{goodsId}", Column: "legacy"}, []string{`"legacy"`, "gbk"}},
		{"charset of a key", sink.RuleConfig{Table: tbl, Kind: sink.KindInvalidate, Keys: []string{"g:{LEGACY}"}}, []string{`"LEGACY"`, "gbk"}},
		{"charset of all columns", sink.RuleConfig{Table: tbl, Kind: sink.KindRewrite, Key: "j:{goodsId}"}, []string{`"legacy"`, "gbk"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mustCompile(t, append(good, tc.rule)).CheckSchema(ctx, e.pdb)
			if err == nil {
				t.Fatal("CheckSchema = nil, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

// TestOversizedTransaction: with max_txn_changes=100, transactions of
// 1000 row changes are applied in pieces yet completely, and the
// checkpoint never points inside one of them.
func TestOversizedTransaction(t *testing.T) {
	const n = 1000
	e := newEnv(t, nil, nil)
	tbl := e.schema + ".big"
	rules := []sink.RuleConfig{
		{Table: tbl, Kind: sink.KindMirror, Key: e.p + "v:{id}", Column: "v"},
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "j:{id}"},
		{Table: tbl, Kind: sink.KindMember, Key: e.p + "grp:{grp}", Member: "{id}"},
	}
	e.exec("CREATE TABLE big (id INT PRIMARY KEY, v INT NOT NULL, grp INT NOT NULL, pad VARCHAR(100) NOT NULL)")
	var vals []string
	for i := 1; i <= n; i++ {
		vals = append(vals, fmt.Sprintf("(%d, %d, %d, REPEAT('x', 100))", i, i, i%7))
	}
	e.exec("INSERT INTO big VALUES " + strings.Join(vals, ","))
	r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.MaxTxnChanges = 100 })
	r.ready(t)
	e.sync(r)
	e.checkConsistent(rules, "big")

	// Watch the checkpoint while the big transactions are applied: it may
	// be before or after each, never inside.
	type span struct{ from, to uint64 }
	var spans []span
	stop := make(chan struct{})
	polled := make(chan map[uint64]bool)
	go func() {
		seen := map[uint64]bool{}
		for {
			select {
			case <-stop:
				polled <- seen
				return
			default:
			}
			if cp, ok, err := sink.ReadCheckpoint(context.Background(), e.rdb, e.ks); err == nil && ok {
				seen[cp.Version] = true
			}
		}
	}()
	txn := func(qs ...string) {
		t.Helper()
		from, _ := e.position().Version()
		e.tx(qs...)
		to, _ := e.position().Version()
		spans = append(spans, span{from, to})
	}
	txn("UPDATE big SET v = v + 1000") // 1000 updates
	var ins []string
	for i := n + 1; i <= n+500; i++ {
		ins = append(ins, fmt.Sprintf("(%d, %d, %d, 'new')", i, i, i%5))
	}
	txn("DELETE FROM big WHERE id <= 300", // 300 deletes
		"INSERT INTO big VALUES "+strings.Join(ins, ","),              // 500 inserts
		"UPDATE big SET grp = grp + 10 WHERE id > 800 AND id <= 1000") // 200 updates
	e.sync(r)
	close(stop)
	seen := <-polled
	for v := range seen {
		for _, s := range spans {
			if v > s.from && v < s.to {
				t.Errorf("checkpoint version %d observed inside a transaction (%d, %d)", v, s.from, s.to)
			}
		}
	}
	cp, _ := e.checkpoint()
	if cp.Version < spans[1].to {
		t.Errorf("checkpoint %s (version %d) is before the end of the last big transaction (%d)", cp.Pos, cp.Version, spans[1].to)
	}
	t.Logf("%d distinct checkpoints observed", len(seen))

	e.checkConsistent(rules, "big")
	if n := r.metric(t, "cachesync_binlog_split_transactions_total"); n != 2 {
		t.Errorf("split_transactions_total = %v, want 2", n)
	}
}
