package config

import (
	"fmt"

	"github.com/cachesync/cachesync/binlog"
)

// Runtime tunes Go's garbage collector for the daemon.
type Runtime struct {
	// GCPercent is Go's GOGC: how far, in percent of the live heap, the
	// heap grows before the next collection; -1 collects only near
	// MemoryLimit. Decoding the binlog allocates about 1 KB per row while
	// the live heap stays small, so Go's default (100) collects dozens of
	// times a second during a catch-up; 400 cut the CPU per row by a third
	// (README, Performance). The GOGC environment variable wins.
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimit is Go's soft memory limit (GOMEMLIMIT), bytes: the
	// collector runs more often as the heap nears it, so GCPercent does
	// not multiply a large live heap (a full read-ahead budget, a huge
	// row). While more than half of it is live (a large L1 cache), the
	// daemon raises it to twice what is live, checked every second: the
	// collector never works harder than at Go's default. 0: 2 ×
	// (mysql.read_ahead_bytes + mysql.max_txn_bytes) + 112 MiB, 256 MiB
	// with their defaults. The GOMEMLIMIT environment variable wins (and
	// is not raised).
	MemoryLimit int64 `yaml:"memory_limit"`
}

// DefaultGCPercent is runtime.gc_percent's default.
const DefaultGCPercent = 400

// SetDefaults fills unset fields; the memory limit follows my's budgets.
func (r *Runtime) SetDefaults(my binlog.Config) {
	if r.GCPercent == 0 {
		r.GCPercent = DefaultGCPercent
	}
	if r.MemoryLimit == 0 {
		r.MemoryLimit = 2*(my.ReadAheadBytes+my.MaxTxnBytes) + 112<<20
	}
}

// Validate reports the first problem.
func (r *Runtime) Validate() error {
	if r.GCPercent < 10 && r.GCPercent != -1 {
		return fmt.Errorf("runtime.gc_percent %d: want 10 or more, or -1 (collect only near runtime.memory_limit)", r.GCPercent)
	}
	if r.MemoryLimit < 64<<20 {
		return fmt.Errorf("runtime.memory_limit %d: want at least 64 MiB (67108864)", r.MemoryLimit)
	}
	return nil
}
