package seckill_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// driftCLI runs the binary; it returns the exit code and both outputs.
func driftCLI(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = testenv.ChildEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("cachesync %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("cachesync %s: exit %d in %s\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	return code, stdout.String(), stderr.String()
}

// TestDriftCommands runs the built `cachesync check` and `cachesync resync`
// against a running daemon: check exits 1 and its table names each drift
// (item, kind, detail); resync of one item repairs that item only (exit 0,
// "no drift" for it, the other still drifts); resync of the rest exits 0;
// check then exits 0 and prints "no drift". Usage errors exit 2.
func TestDriftCommands(t *testing.T) {
	bin := testenv.BuildCachesync(t)
	s := newStack(t)
	d := s.start("")
	s.addItem(31, 10)
	s.addItem(32, 10)
	k := newDriftKit(t, s, d)
	o1 := k.buy(t, 31, 1)
	k.buy(t, 32, 1)

	cfgPath := filepath.Join(t.TempDir(), "cachesync.yaml")
	if err := os.WriteFile(cfgPath, []byte(s.configYAML(0, 0, "")), 0o600); err != nil {
		t.Fatal(err)
	}

	if code, out, _ := driftCLI(t, bin, "check", "-config", cfgPath); code != 0 || !strings.Contains(out, "no drift") {
		t.Fatalf("check before any drift: exit %d\n%s", code, out)
	}

	ctx := context.Background()
	s.rdb.Set(ctx, "sk:{31}:stock", 3, 0)
	s.rdb.HDel(ctx, "sk:{31}:buyers", "1")
	s.rdb.HSet(ctx, "sk:{32}:buyers", "999", "32-0190f0e0-0000-7000-8000-000000000999")

	code, out, _ := driftCLI(t, bin, "check", "-config", cfgPath)
	if code != 1 {
		t.Fatalf("check with drift: exit %d, want 1", code)
	}
	for _, re := range []string{
		`(?m)^DRIFT`,
		`(?m)^31\s+stock\s+3\s+9$`,
		`(?m)^31\s+buyer_missing\s+1\s+none\s+` + regexp.QuoteMeta(o1) + `$`,
		`(?m)^32\s+buyer_extra\s+999\s+32-0190f0e0-0000-7000-8000-000000000999\s+none$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("check output does not match %s", re)
		}
	}
	if strings.Contains(out, "no drift") {
		t.Errorf("check output says no drift")
	}
	// -item limits the check; -rounds 1 still sees it.
	if code, out, _ := driftCLI(t, bin, "check", "-config", cfgPath, "-item", "32", "-rounds", "1"); code != 1 || strings.Contains(out, "\n31 ") || !strings.Contains(out, "buyer_extra") {
		t.Errorf("check -item 32: exit %d\n%s", code, out)
	}

	if code, out, _ := driftCLI(t, bin, "resync", "-config", cfgPath, "-item", "31"); code != 0 || !strings.Contains(out, "no drift") {
		t.Fatalf("resync -item 31: exit %d, want 0 and no drift\n%s", code, out)
	}
	code, out, _ = driftCLI(t, bin, "check", "-config", cfgPath)
	if code != 1 || !strings.Contains(out, "buyer_extra") || regexp.MustCompile(`(?m)^31\s+(stock|buyer)`).MatchString(out) {
		t.Fatalf("check after resync of 31 only: exit %d, want 1 with item 32's drift alone\n%s", code, out)
	}
	if code, out, _ := driftCLI(t, bin, "resync", "-config", cfgPath, "-item", "32"); code != 0 || !strings.Contains(out, "no drift") {
		t.Fatalf("resync -item 32: exit %d\n%s", code, out)
	}
	if code, out, _ := driftCLI(t, bin, "check", "-config", cfgPath); code != 0 || !strings.Contains(out, "no drift") {
		t.Fatalf("check after the resyncs: exit %d, want 0 and no drift\n%s", code, out)
	}
	if v, _ := s.rdb.Get(ctx, "sk:{31}:stock").Int64(); v != 9 {
		t.Errorf("Redis stock of 31: %d, want 9", v)
	}
	if got := s.rdb.HGet(ctx, "sk:{31}:buyers", "1").Val(); got != o1 {
		t.Errorf("buyer 1 of 31: %q, want %q", got, o1)
	}

	for _, args := range [][]string{
		{"resync", "-config", cfgPath},
		{"resync", "-config", cfgPath, "-item", "x"},
		{"check", "-config", cfgPath, "-item", "0"},
	} {
		if code, _, _ := driftCLI(t, bin, args...); code != 2 {
			t.Errorf("cachesync %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
}
