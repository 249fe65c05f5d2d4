package sink

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
)

// TestSetCheckpoint: an operator's write of the checkpoint is fenced like a
// batch (refused once the term is over), compare-and-sets the version
// (refused when the checkpoint moved since it was read), is refused while a
// resync is pending, replaces the hash whole, deletes the snapshot journal
// and publishes nothing; a daemon's Run then resumes from it.
func TestSetCheckpoint(t *testing.T) {
	e := newFenceEnv(t)
	ctx := context.Background()
	fence := Fence{Key: e.ks.Leader("cdc"), Value: "7 tool"}
	e.rdb.Set(ctx, fence.Key, fence.Value, time.Minute)
	sub := e.rdb.Subscribe(ctx, e.ch)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	at := func(file string, pos uint32) Checkpoint {
		p := binlog.Position{File: file, Pos: pos}
		v, _ := p.Version()
		return Checkpoint{Pos: p, Version: v}
	}
	// None stored: expect nil. The journal of an unfinished snapshot goes.
	e.rdb.SAdd(ctx, e.ks.Snapshot(), "", "m:1")
	first := at("bin.000002", 400)
	first.GTID = "0-1-9"
	if err := SetCheckpoint(ctx, e.rdb, e.ks, fence, nil, first); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ReadCheckpoint(ctx, e.rdb, e.ks)
	if err != nil || !ok || got.Pos != first.Pos || got.Version != first.Version || got.GTID != "0-1-9" || !got.Commit.IsZero() {
		t.Fatalf("stored %+v (%v, %v), want %+v with no commit time", got, ok, err, first)
	}
	if n := e.rdb.Exists(ctx, e.ks.Snapshot()).Val(); n != 0 {
		t.Errorf("snapshot journal kept")
	}

	next := at("bin.000001", 1000) // moving back is allowed
	for _, tc := range []struct {
		name   string
		fence  Fence
		expect *Checkpoint
		want   error
	}{
		{"stale version", fence, &Checkpoint{Version: first.Version - 1}, ErrConflict},
		{"none expected", fence, nil, ErrConflict},
		{"other term", Fence{Key: fence.Key, Value: "6 old"}, &first, ErrFenced},
		{"no lease", Fence{Key: e.ks.Leader("other"), Value: "7 tool"}, &first, ErrFenced},
	} {
		if err := SetCheckpoint(ctx, e.rdb, e.ks, tc.fence, tc.expect, next); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if got, _, _ := ReadCheckpoint(ctx, e.rdb, e.ks); got.Pos != first.Pos {
		t.Fatalf("a refused write changed the checkpoint to %s", got.Pos)
	}
	if err := SetCheckpoint(ctx, e.rdb, e.ks, fence, &first, Checkpoint{Pos: next.Pos, Version: 1}); err == nil {
		t.Errorf("a version that does not match the position was written")
	}

	e.rdb.Set(ctx, e.ks.Resync(), "1", 0)
	if err := SetCheckpoint(ctx, e.rdb, e.ks, fence, &first, next); !errors.Is(err, ErrResyncPending) {
		t.Errorf("with a resync pending: %v, want ErrResyncPending", err)
	}
	e.rdb.Del(ctx, e.ks.Resync())
	if err := SetCheckpoint(ctx, e.rdb, e.ks, fence, &first, next); err != nil {
		t.Fatal(err)
	}
	h := e.rdb.HGetAll(ctx, e.ks.Checkpoint()).Val()
	if want := map[string]string{"file": "bin.000001", "pos": "1000", "version": "4294968296", "gtid": "", "commit_us": ""}; !maps.Equal(h, want) {
		t.Errorf("checkpoint hash %v, want %v (the old gtid gone)", h, want)
	}
	if msg, err := sub.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Errorf("published %v", msg)
	}
	if seq := e.rdb.Get(ctx, e.ks.Seq()).Val(); seq != "" {
		t.Errorf("seq counter %q, want untouched", seq)
	}

	// A daemon's term resumes from it: its first batch compare-and-sets
	// against the version written.
	e.rdb.Set(ctx, fence.Key, "8 daemon", time.Minute)
	stored, _, _ := ReadCheckpoint(ctx, e.rdb, e.ks)
	if err := e.run(Resume{Expect: &stored, Fence: Fence{Key: fence.Key, Value: "8 daemon"}}, txn(pos("bin.000001", 1100), ins(int32(1), "x", int32(5), "on"))); err != nil {
		t.Fatal(err)
	}
	if got := e.stored(); got.Pos.Pos != 1100 {
		t.Errorf("after the daemon's batch: %s, want bin.000001:1100", got.Pos)
	}
	if v := e.rdb.Get(ctx, "m:1").Val(); v != "5" {
		t.Errorf("m:1 = %q after the daemon's batch, want 5", v)
	}
}
