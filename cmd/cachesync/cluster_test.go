package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
)

// TestClusterRefused: with redis.mode cluster, `validate` and `run` stop
// with exit code 1 and the sink's refusal (the apply script would be
// refused with CROSSSLOT; per-slot apply is issue 11), after MySQL was
// checked and before anything was written to the cluster.
func TestClusterRefused(t *testing.T) {
	bin := testenv.BuildCachesync(t)
	my := testenv.StartMariaDB(t)
	c := testenv.StartRedisCluster(t)
	createCrashTables(t, my.DB(t, crashSchema))
	const placeholder = "redis-section-replaced"
	cfg := crashConfig(my.Addr(), placeholder, 4242, 100)
	old := "redis:\n  addr: " + placeholder + "\n"
	if !strings.Contains(cfg, old) {
		t.Fatalf("crashConfig has no %q to replace", old)
	}
	cfg = strings.Replace(cfg, old, "redis:\n  mode: cluster\n  addrs: ["+strings.Join(c.Addrs(), ", ")+"]\n", 1)
	path := filepath.Join(t.TempDir(), "cachesync.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, command := range []string{"validate", "run"} {
		t.Run(command, func(t *testing.T) {
			// A daemon that does not refuse would run until killed.
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, command, "-config", path)
			cmd.Env = testenv.ChildEnv()
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), sink.ErrCluster.Error()) {
				t.Fatalf("cachesync %s: %v\n%s\nwant exit code 1 and %q", command, err, out, sink.ErrCluster)
			}
			t.Logf("cachesync %s: %s", command, strings.TrimSpace(string(out)))
		})
	}

	ctx := context.Background()
	for _, addr := range c.Addrs() {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		n, err := rdb.DBSize(ctx).Result()
		rdb.Close()
		if err != nil || n != 0 {
			t.Errorf("%s holds %d keys (%v), want none", addr, n, err)
		}
	}
}
