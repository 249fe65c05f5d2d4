package daemon

import (
	"context"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
)

// current reads the collector's setting without changing it.
func current() (int, int64) {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p, debug.SetMemoryLimit(-1)
}

func TestTuneGC(t *testing.T) {
	p0, l0 := current()
	rt := config.Runtime{GCPercent: 321, MemoryLimit: 500 << 20}

	gc, restore := TuneGC(rt, func(string) (string, bool) { return "", false })
	if p, l := current(); p != 321 || l != 500<<20 || gc.Percent != 321 || gc.Limit != 500<<20 || len(gc.FromEnv) != 0 {
		t.Errorf("in force %d, %d; reported %+v: want the configuration's", p, l, gc)
	}
	restore()
	if p, l := current(); p != p0 || l != l0 {
		t.Errorf("after restore %d, %d: want %d, %d", p, l, p0, l0)
	}

	// An operator's GOGC wins: Go applied it at start, TuneGC leaves it.
	env := func(name string) (string, bool) {
		if name == "GOGC" {
			return "150", true
		}
		return "", false
	}
	gc, restore = TuneGC(rt, env)
	defer restore()
	if p, l := current(); p != p0 || l != 500<<20 || gc.Percent != p0 || !slices.Equal(gc.FromEnv, []string{"GOGC"}) {
		t.Errorf("with GOGC set: in force %d, %d; reported %+v: want GOGC untouched (%d), the limit set", p, l, gc, p0)
	}
}

func TestLimitFor(t *testing.T) {
	for _, c := range []struct{ configured, live, want int64 }{
		{256 << 20, 10 << 20, 256 << 20},
		{256 << 20, 128 << 20, 256 << 20},
		{256 << 20, 200 << 20, 400 << 20},
	} {
		if got := limitFor(c.configured, c.live); got != c.want {
			t.Errorf("limitFor(%d MiB, %d MiB live) = %d MiB, want %d", c.configured>>20, c.live>>20, got>>20, c.want>>20)
		}
	}
}

// A live heap past the configured limit raises the limit to twice what is
// live, so that the collector does not run without pause; once it is
// freed, the configured limit is back.
func TestFollowLiveHeap(t *testing.T) {
	_, l0 := current()
	defer debug.SetMemoryLimit(l0)
	const configured = 64 << 20
	debug.SetMemoryLimit(configured)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); FollowLiveHeap(ctx, configured, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	waitLimit := func(ok func(int64) bool, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			runtime.GC() // the live heap is measured by a collection
			if l := debug.SetMemoryLimit(-1); ok(l) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("memory limit %d MiB: want %s (live %d MiB)", debug.SetMemoryLimit(-1)>>20, what, liveHeap()>>20)
	}
	live := make([]byte, 100<<20)
	waitLimit(func(l int64) bool { return l >= 200<<20 }, "≥ 200 MiB with 100 MiB live")
	runtime.KeepAlive(live)
	live = nil
	waitLimit(func(l int64) bool { return l == configured }, "the configured 64 MiB once it is freed")
}
