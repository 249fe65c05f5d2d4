package main

// position show / set with the real binary against private MariaDB and
// Redis, with a real daemon leading or stopped.

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// cli runs the binary with args and returns its exit code and output.
func cli(t *testing.T, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = testenv.ChildEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("cachesync %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("cachesync %s: exit %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

// storedCheckpoint is the checkpoint hash in Redis.
func storedCheckpoint(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	h, err := rdb.HGetAll(context.Background(), "cachesync:checkpoint").Result()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestPositionSet: position set is refused while a daemon leads and
// changes nothing; with the lease free it checks the position on the server
// (refusing a purged or foreign file, an offset past the end or inside an
// event), resolves a GTID, and writes the checkpoint; the daemon then
// resumes there: a row committed after it reaches Redis, one committed
// between the old checkpoint and it never does (the move skipped it).
// Moving back with -force while the daemon leads makes it step down, take
// the lease again and replay: the skipped row arrives. -resync makes the
// next leader rebuild every key.
func TestPositionSet(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test: skipped in -short mode")
	}
	e := newCrashEnv(t, 2000)
	ctx := context.Background()
	mustExec(t, e.db, "INSERT INTO markers (id, v) VALUES (1, 0)")
	d := e.replica(t, 1, "  poll_interval: 100ms\n")
	r := d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return e.rdb.Get(ctx, "marker:1").Val() == "0" && snapshotDone(ctx, e.rdb) }); err != nil {
		t.Fatalf("not streaming: %v%s", err, r.Tail())
	}

	// While d1 leads: show names it; set is refused and changes nothing.
	c0 := storedCheckpoint(t, e.rdb)
	c0Pos := c0["file"] + ":" + c0["pos"]
	code, out, _ := cli(t, e.bin, "position", "show", "-config", d.Config)
	for _, w := range []string{"checkpoint:   " + c0Pos + " (version " + c0["version"] + ")", "snapshot:     none pending", `cdc lease:    held by "d1" (token `, "left unless renewed"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("position show while d1 leads: exit %d, want 0 and %q", code, w)
		}
	}
	code, _, errOut := cli(t, e.bin, "position", "set", "-config", d.Config, c0["file"]+":4")
	for _, w := range []string{"refused", `held by "d1"`, "left unless renewed", "-force"} {
		if code != 1 || !strings.Contains(errOut, w) {
			t.Errorf("position set while d1 leads: exit %d, want 1 and %q in stderr", code, w)
		}
	}
	if got := storedCheckpoint(t, e.rdb); got["version"] != c0["version"] {
		t.Fatalf("refused set changed the checkpoint: %v, was %v", got, c0)
	}

	// d1 stops (SIGTERM releases the lease). Row 2 is committed before P,
	// row 3 after it.
	r.Term(t, termWithin)
	mustExec(t, e.db, "INSERT INTO markers (id, v) VALUES (2, 20)")
	p, err := binlog.CurrentPosition(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	var gtidAtP string
	if err := e.db.QueryRow("SELECT BINLOG_GTID_POS(?, ?)", p.File, p.Pos).Scan(&gtidAtP); err != nil || gtidAtP == "" {
		t.Fatalf("BINLOG_GTID_POS(%s): %q, %v", p, gtidAtP, err)
	}
	mustExec(t, e.db, "INSERT INTO markers (id, v) VALUES (3, 30)")
	logs, err := binlog.BinaryLogs(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	size := logs[len(logs)-1].Size

	// Positions the server cannot stream from are refused.
	for _, tc := range []struct{ pos, want string }{
		{"other-bin.000001:4", "is not on the server"},
		{p.File + ":" + strconv.FormatUint(size+100, 10), "past the end"},
		{p.File + ":" + strconv.Itoa(int(p.Pos)+1), "not the start of an event"},
		{p.File + ":2", "offsets start at 4"},
		{"0-999-1", "gtid"},
	} {
		code, _, errOut := cli(t, e.bin, "position", "set", "-config", d.Config, tc.pos)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("position set %s: exit %d, want 1 and %q in stderr", tc.pos, code, tc.want)
		}
	}
	// A position inside a transaction: the event after the GTID event of
	// row 3's transaction.
	var inside uint64
	if err := e.db.QueryRow("SHOW BINLOG EVENTS IN '"+p.File+"' FROM "+strconv.Itoa(int(p.Pos))+" LIMIT 1").
		Scan(new(string), new(uint64), new(string), new(uint64), &inside, new(string)); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := cli(t, e.bin, "position", "set", "-config", d.Config, p.File+":"+strconv.FormatUint(inside, 10)); code != 1 || !strings.Contains(errOut, "inside a transaction") {
		t.Errorf("position set inside a transaction: exit %d, want 1 and 'inside a transaction'", code)
	}
	if got := storedCheckpoint(t, e.rdb); got["version"] != c0["version"] {
		t.Fatalf("refused sets changed the checkpoint: %v, was %v", got, c0)
	}

	// Forward, by GTID: the server resolves it to P.
	code, out, errOut = cli(t, e.bin, "position", "set", "-config", d.Config, gtidAtP)
	if code != 0 || !strings.Contains(out, "ok: checkpoint set to "+p.String()) || !strings.Contains(errOut, "warning: moved forward") {
		t.Fatalf("position set %s (gtid at %s): exit %d, want 0, the position and a warning", gtidAtP, p, code)
	}
	pv, _ := p.Version()
	got := storedCheckpoint(t, e.rdb)
	if want := map[string]string{"file": p.File, "pos": strconv.Itoa(int(p.Pos)), "version": strconv.FormatUint(pv, 10), "gtid": gtidAtP, "commit_us": ""}; !maps.Equal(got, want) {
		t.Fatalf("checkpoint after set: %v, want %v", got, want)
	}
	if n := e.rdb.Exists(ctx, "cachesync:leader:cdc").Val(); n != 0 {
		t.Errorf("position set left the lease held")
	}
	if code, out, _ := cli(t, e.bin, "position", "show", "-config", d.Config); code != 0 || !strings.Contains(out, "checkpoint:   "+p.String()) ||
		!strings.Contains(out, "gtid:         "+gtidAtP) || !strings.Contains(out, "cdc lease:    free") {
		t.Errorf("position show after set: exit %d", code)
	}

	// The daemon resumes at P: row 3 arrives, row 2 (before P) never does.
	r = d.Start(t)
	if err := waitUntil(60*time.Second, func() bool { return e.rdb.Get(ctx, "marker:3").Val() == "30" }); err != nil {
		t.Fatalf("row 3 (after the set position) not in Redis: %v%s", err, r.Tail())
	}
	if !r.LogHas(`"pos":"` + p.String() + `"`) {
		t.Errorf("the daemon did not log streaming from %s%s", p, r.Tail())
	}
	mustExec(t, e.db, "UPDATE markers SET v = 1 WHERE id = 1")
	if err := waitUntil(30*time.Second, func() bool { return e.rdb.Get(ctx, "marker:1").Val() == "1" }); err != nil {
		t.Fatalf("not streaming after the set: %v", err)
	}
	if n := e.rdb.Exists(ctx, "marker:2").Val(); n != 0 {
		t.Fatalf("row 2, committed before the set position, was applied: marker:2 = %q", e.rdb.Get(ctx, "marker:2").Val())
	}

	// Back to c0 with -force while d1 leads: it steps down, takes the lease
	// again and replays from c0, so row 2 arrives.
	code, out, errOut = cli(t, e.bin, "position", "set", "-force", "-config", d.Config, c0Pos)
	if code != 0 || !strings.Contains(errOut, `took the CDC lease from "d1"`) || !strings.Contains(out, "moved back") {
		t.Fatalf("position set -force %s: exit %d, want 0, the lease taken from d1 and 'moved back'", c0Pos, code)
	}
	if err := waitUntil(30*time.Second, func() bool { return e.rdb.Get(ctx, "marker:2").Val() == "20" }); err != nil {
		t.Fatalf("row 2 not replayed after moving back: %v%s", err, r.Tail())
	}
	if v := e.rdb.Get(ctx, "marker:3").Val(); v != "30" {
		t.Errorf("marker:3 = %q after the replay, want 30", v)
	}
	if r.Exited() || !r.LogHas("stepping down") {
		t.Errorf("d1 exited (%v) or did not step down%s", r.Err(), r.Tail())
	}
	if err := waitUntil(10*time.Second, func() bool { id, _ := leaderOf(ctx, e.rdb, "cdc"); return id == "d1" }); err != nil {
		t.Errorf("d1 did not take the lease again: %v", err)
	}

	// -resync: the checkpoint goes, the marker is set; the next leader
	// rebuilds every key from a snapshot.
	r.Term(t, termWithin)
	mustExec(t, e.db, "UPDATE markers SET v = 2 WHERE id = 1")
	e.rdb.Set(ctx, "marker:1", "stale", 0)
	code, out, _ = cli(t, e.bin, "position", "set", "-resync", "-config", d.Config)
	if code != 0 || !strings.Contains(out, "resync marked") {
		t.Fatalf("position set -resync: exit %d", code)
	}
	if len(storedCheckpoint(t, e.rdb)) != 0 || e.rdb.Exists(ctx, "cachesync:resync").Val() != 1 {
		t.Fatalf("after -resync: checkpoint %v, marker %d; want none and set", storedCheckpoint(t, e.rdb), e.rdb.Exists(ctx, "cachesync:resync").Val())
	}
	if code, out, _ := cli(t, e.bin, "position", "show", "-config", d.Config); code != 0 || !strings.Contains(out, "checkpoint:   none") || !strings.Contains(out, "resync:       pending") {
		t.Errorf("position show after -resync: exit %d", code)
	}
	if code, _, errOut := cli(t, e.bin, "position", "set", "-config", d.Config, c0Pos); code != 1 || !strings.Contains(errOut, "a resync is pending") {
		t.Errorf("position set with a resync pending: exit %d, want 1 and 'a resync is pending'", code)
	}
	r = d.Start(t)
	if err := waitUntil(60*time.Second, func() bool {
		return e.rdb.Get(ctx, "marker:1").Val() == "2" && e.rdb.Exists(ctx, "cachesync:resync").Val() == 0 && snapshotDone(ctx, e.rdb)
	}); err != nil {
		t.Fatalf("no resync after position set -resync: %v%s", err, r.Tail())
	}
	for id, v := range map[string]string{"2": "20", "3": "30"} {
		if got := e.rdb.Get(ctx, "marker:"+id).Val(); got != v {
			t.Errorf("marker:%s = %q after the resync, want %s", id, got, v)
		}
	}
	r.Term(t, termWithin)
	d.CheckLogs(t)
}
