package pipeline_test

import (
	"strings"
	"testing"
	"time"
)

// TestReadyOnlyWhenSnapshotApplied: a fresh pipeline snapshots 30k rows;
// from the first moment Ready says yes, the snapshot's checkpoint (written
// after its last row) is in Redis. Before the fix Ready said yes as soon as
// the snapshot was read, with thousands of rows still queued for Redis.
func TestReadyOnlyWhenSnapshotApplied(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.exec(itemsTable)
	e.exec("INSERT INTO items (id, cat, name, price, stock, status) SELECT seq, seq % 50, CONCAT('item ', seq), seq / 100, seq % 1000, 'on_sale' FROM seq_1_to_30000")
	r := e.start(e.itemRules(), nil)
	// On a cluster a batch is one script call per slot it writes: the
	// snapshot's batches of 2000 rows, whose keys fall in thousands of
	// slots, took 52 s of 60 under -race on 2 cores (21 s on one Redis).
	limit := 60 * time.Second
	if e.ks.Cluster {
		limit = 3 * time.Minute
	}
	deadline := time.Now().Add(limit)
	sawSnapshotting := false
	for {
		r.failIfStopped(t)
		if time.Now().After(deadline) {
			t.Fatalf("not ready within %v: %v", limit, r.p.Ready())
		}
		err := r.p.Ready()
		if err != nil && strings.HasPrefix(err.Error(), "snapshotting") {
			sawSnapshotting = true
		}
		if err == nil && r.p.Role() == "leader" {
			if _, ok := e.checkpoint(); !ok {
				t.Fatal("ready while the snapshot's checkpoint is not in Redis")
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !sawSnapshotting {
		t.Error(`Ready never said "snapshotting"`)
	}
	e.sync(r)
	e.checkConsistent(e.itemRules(), "items")
}
