package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// sourceConfig is a daemon of source name on MariaDB mysqlAddr; redis is
// the YAML of its redis section. Its rules write keys of its own
// (name:item:{id}), invalidate keys shared with the other source
// (shared:{id}: order does not matter) and keep members of its own rows
// in sets shared with it (grp:{grp}, members name:{id}); extra rules come
// last.
func sourceConfig(name, mysqlAddr, redis string, serverID uint32, extra string) string {
	return fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
  heartbeat: 1s
redis:
%s
http:
  addr: 127.0.0.1:0
admin:
  addr: 127.0.0.1:0
log:
  level: info
  format: json
sink:
  source: %s
  rules:
    - table: crash.items
      kind: rewrite
      key: "%[4]s:item:{id}"
      format: json
      columns: [id, qty]
    - table: crash.items
      kind: invalidate
      keys: ["shared:{id}"]
    - table: crash.items
      kind: member
      key: "grp:{grp}"
      member: "%[4]s:{id}"
    - table: crash.markers
      kind: mirror
      key: "%[4]s:marker:{id}"
      column: v
%s`, mysqlAddr, serverID, redis, name, extra)
}

// TestTwoSources: two MariaDB primaries, one daemon each, one Redis (a
// standalone one, and a Redis Cluster). Each source has its own
// checkpoint; rows of both land in shared member sets; one daemon is
// killed with kill -9 mid-stream and restarted; afterwards every key
// equals its source's rows. A third source whose rules write the keys of
// another is refused at start, naming both rules.
func TestTwoSources(t *testing.T) {
	if testing.Short() {
		t.Skip("two MariaDB servers and daemons: skipped in -short mode")
	}
	bin := testenv.BuildCachesync(t)
	mys := []*testenv.MariaDB{testenv.StartMariaDB(t), testenv.StartMariaDB(t)}
	for _, mode := range []string{"standalone", "cluster"} {
		t.Run(mode, func(t *testing.T) {
			var rdb redis.UniversalClient
			var section string
			if mode == "cluster" {
				c := testenv.StartRedisCluster(t)
				rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
				section = "  mode: cluster\n  addrs: [" + strings.Join(c.Addrs(), ", ") + "]"
			} else {
				rs := testenv.StartRedis(t)
				rdb = redis.NewClient(&redis.Options{Addr: rs.Addr()})
				section = "  addr: " + rs.Addr()
			}
			t.Cleanup(func() { rdb.Close() })
			twoSources(t, bin, mys, rdb, section)
		})
	}
}

func twoSources(t *testing.T, bin string, mys []*testenv.MariaDB, rdb redis.UniversalClient, section string) {
	ctx := context.Background()
	names := []string{"a", "b"}
	dbs := make([]*sql.DB, 2)
	ds := make([]*testenv.Child, 2)
	runs := make([]*testenv.ChildRun, 2)
	dir := t.TempDir()
	for i, my := range mys {
		admin := my.DB(t, "")
		mustExec(t, admin, "DROP DATABASE IF EXISTS "+crashSchema)
		mustExec(t, admin, "CREATE DATABASE "+crashSchema)
		dbs[i] = my.DB(t, crashSchema)
		createCrashTables(t, dbs[i])
		mustExec(t, dbs[i], "INSERT INTO markers (id, v) VALUES (1, 0)")
		path := filepath.Join(dir, names[i]+".yaml")
		cfg := sourceConfig(names[i], my.Addr(), section, uint32(2000+rand.N(1<<30)), "")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		ds[i] = &testenv.Child{Bin: bin, Config: path, Dir: filepath.Join(dir, names[i])}
		if err := os.Mkdir(ds[i].Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ds[i].KillCurrent)
		runs[i] = ds[i].Start(t)
	}

	// Writers: random single-row changes on each source.
	wctx, stop := context.WithCancel(ctx)
	errs := make(chan error, 2)
	for i := range dbs {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for wctx.Err() == nil {
				id := rng.IntN(300)
				var err error
				switch rng.IntN(4) {
				case 0:
					_, err = dbs[i].Exec("DELETE FROM items WHERE id = ?", id)
				default:
					_, err = dbs[i].Exec("INSERT INTO items (id, qty, grp, status) VALUES (?, ?, ?, 'active') ON DUPLICATE KEY UPDATE qty = VALUES(qty), grp = VALUES(grp)", id, rng.IntN(100), rng.IntN(5))
				}
				if err != nil && wctx.Err() == nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(2 * time.Second)
	runs[0].Kill(t) // kill -9 of source a mid-stream
	time.Sleep(500 * time.Millisecond)
	runs[0] = ds[0].Start(t)
	time.Sleep(2 * time.Second)
	stop()
	select {
	case err := <-errs:
		t.Fatalf("writer: %v", err)
	default:
	}

	// Caught up: each source's marker arrives under its own name.
	for i, db := range dbs {
		mustExec(t, db, "UPDATE markers SET v = 1 WHERE id = 1")
		if err := waitUntil(60*time.Second, func() bool { return rdb.Get(ctx, names[i]+":marker:1").Val() == "1" || runs[i].Exited() }); err != nil || runs[i].Exited() {
			t.Fatalf("source %s did not catch up (%v)%s", names[i], err, runs[i].Tail())
		}
	}
	members := map[string][]string{}
	for i, db := range dbs {
		rows, err := db.Query("SELECT id, qty, grp FROM items")
		if err != nil {
			t.Fatal(err)
		}
		want := map[int]string{}
		for rows.Next() {
			var id, qty, grp int
			if err := rows.Scan(&id, &qty, &grp); err != nil {
				t.Fatal(err)
			}
			want[id] = fmt.Sprintf(`{"id":%d,"qty":%d}`, id, qty)
			members["grp:"+strconv.Itoa(grp)] = append(members["grp:"+strconv.Itoa(grp)], names[i]+":"+strconv.Itoa(id))
		}
		rows.Close()
		bad := 0
		for id := range 300 {
			got, err := rdb.Get(ctx, names[i]+":item:"+strconv.Itoa(id)).Result()
			if w, ok := want[id]; (ok && got != w) || (!ok && !errors.Is(err, redis.Nil)) {
				if bad++; bad <= 5 {
					t.Errorf("source %s, item %d: %q (%v), want %q", names[i], id, got, err, want[id])
				}
			}
		}
		if n, err := rdb.Exists(ctx, "cachesync:{"+names[i]+"}:checkpoint").Result(); err != nil || n != 1 {
			t.Errorf("checkpoint of source %s: %d (%v)", names[i], n, err)
		}
	}
	for k, want := range members {
		got, err := rdb.SMembers(ctx, k).Result()
		slices.Sort(got)
		slices.Sort(want)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: %d members, want %d (%v)", k, len(got), len(want), err)
		}
	}

	// A third source writing source a's keys is refused.
	path := filepath.Join(dir, "c.yaml")
	cfg := sourceConfig("c", mys[0].Addr(), section, uint32(3000+rand.N(1<<30)),
		"    - table: crash.items\n      kind: mirror\n      key: \"a:item:{id}\"\n      column: qty\n")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, "run", "-config", path)
	cmd.Env = testenv.ChildEnv()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), sink.ErrSourceOverlap.Error()) || !strings.Contains(string(out), `\"a:item:{id}\"`) {
		t.Fatalf("a source writing another's keys: %v\n%s\nwant an exit naming %q", err, out, sink.ErrSourceOverlap)
	}
	for i := range runs {
		runs[i].Term(t, termWithin)
	}
}
