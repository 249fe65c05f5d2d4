package seckill_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/rs/zerolog"
)

// TestRebuildsBounded inserts 20 items in one statement: the jobs role
// must build them all, at most 8 at a time (maxRebuilds). Concurrency is
// read from the rebuilds' own log lines, in the order written: a rebuild
// runs from its "reservations paused" line to its "reservations resumed"
// line, and releases its slot only after the latter, so the count can only
// be below the slots in use. Without the bound all 20 ran at once.
func TestRebuildsBounded(t *testing.T) {
	const items = 20
	s := newStack(t)
	var logs testenv.LogBuffer
	s.startWith("", logTo(&logs, zerolog.InfoLevel))
	var values []string
	var args []any
	for id := 1; id <= items; id++ {
		values = append(values, "(?, 'item', 3)")
		args = append(args, id)
	}
	s.exec("INSERT INTO sk_items (id, name, stock) VALUES "+strings.Join(values, ", "), args...)
	ctx := context.Background()
	s.eventually(60*time.Second, "every item ready", func() bool {
		for id := 1; id <= items; id++ {
			if s.rdb.Exists(ctx, fmt.Sprintf("sk:{%d}:ready", id)).Val() == 0 {
				return false
			}
		}
		return true
	})
	running, most, started := 0, 0, 0
	for _, l := range strings.Split(logs.String(), "\n") {
		var e struct {
			Role, Message string
		}
		if json.Unmarshal([]byte(l), &e) != nil || e.Role != "rebuild" {
			continue
		}
		switch {
		case strings.Contains(e.Message, "reservations paused"):
			running++
			started++
			most = max(most, running)
		case strings.Contains(e.Message, "reservations resumed"):
			running--
		}
	}
	t.Logf("%d rebuilds, at most %d at once", started, most)
	if started < items {
		t.Errorf("%d rebuilds logged, want at least %d", started, items)
	}
	if most > 8 {
		t.Errorf("%d rebuilds ran at once, want at most 8", most)
	}
}
