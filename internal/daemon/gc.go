package daemon

import (
	"math"
	"runtime/debug"

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
