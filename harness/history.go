package harness

import (
	"sync"
	"time"
)

// history records, per row, when each version's COMMIT returned, to judge
// whether a read was stale.
type history struct {
	mu   sync.Mutex
	rows map[int][]commit
}

type commit struct {
	at      time.Time
	version int64
}

func newHistory() *history { return &history{rows: make(map[int][]commit)} }

func (h *history) add(id int, version int64, at time.Time) {
	h.mu.Lock()
	h.rows[id] = append(h.rows[id], commit{at: at, version: version})
	h.mu.Unlock()
}

// required returns the newest version whose COMMIT returned before t: a
// read that began at t must return at least that version.
func (h *history) required(id int, t time.Time) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Two writers' COMMITs of one row may be recorded out of order, so
	// look at every commit that returned before t.
	var v int64
	for _, c := range h.rows[id] {
		if c.at.Before(t) && c.version > v {
			v = c.version
		}
	}
	return v
}
