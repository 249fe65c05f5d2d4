package daemon

import (
	"context"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/cachesync/cachesync/config"
)

// GC is the collector's setting TuneGC left in force.
type GC struct {
	Percent int   // GOGC; -1 off
	Limit   int64 // GOMEMLIMIT, bytes; math.MaxInt64 none
	// FromEnv names the environment variables that won over the
	// configuration (Go applied them at start).
	FromEnv []string
}

// TuneGC applies rt to Go's collector, except a setting whose environment
// variable (GOGC, GOMEMLIMIT) lookup finds: Go applied that one at start,
// and an operator who sets it means it. restore puts back what was in
// force before (the bench measures other pipelines at Go's defaults).
func TuneGC(rt config.Runtime, lookup func(string) (string, bool)) (gc GC, restore func()) {
	set := func(name string) bool {
		if lookup == nil {
			return true
		}
		if v, ok := lookup(name); ok && v != "" {
			gc.FromEnv = append(gc.FromEnv, name)
			return false
		}
		return true
	}
	oldPercent := debug.SetGCPercent(-1) // reads it; put back just below
	debug.SetGCPercent(oldPercent)
	oldLimit := debug.SetMemoryLimit(-1) // a negative limit only reads it
	gc.Percent, gc.Limit = oldPercent, oldLimit
	// The limit first: with the percentage raised before it, a collection
	// could be planned past the limit in between.
	if set("GOMEMLIMIT") {
		debug.SetMemoryLimit(rt.MemoryLimit)
		gc.Limit = rt.MemoryLimit
	}
	if set("GOGC") {
		debug.SetGCPercent(rt.GCPercent)
		gc.Percent = rt.GCPercent
	}
	return gc, func() {
		debug.SetGCPercent(oldPercent)
		debug.SetMemoryLimit(oldLimit)
	}
}

// NoLimit is GC.Limit when no memory limit is in force.
const NoLimit = math.MaxInt64

// liveHeap reads the heap the last collection found live.
func liveHeap() int64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}

// limitFor is the memory limit to keep when live bytes survived the last
// collection: the configured one, or twice what is live if that is more.
// Under a limit the collector works harder the nearer the heap comes, up
// to half the CPU when what is live exceeds it (a large L1 cache, a huge
// row): never harder than Go's default (GOGC=100) would.
func limitFor(configured, live int64) int64 {
	return max(configured, 2*live)
}

// FollowLiveHeap keeps the memory limit at limitFor(configured, live),
// checking every interval until ctx ends. Without it, a live heap past
// the configured limit would have the collector run without pause.
func FollowLiveHeap(ctx context.Context, configured int64, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	current := configured
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if want := limitFor(configured, liveHeap()); want != current {
			debug.SetMemoryLimit(want)
			current = want
		}
	}
}
