package pipeline_test

import (
	"testing"

	"github.com/cachesync/cachesync/binlog"
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
