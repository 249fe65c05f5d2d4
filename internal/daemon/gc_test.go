package daemon

import (
	"runtime/debug"
	"slices"
	"testing"

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
