package binlog

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Budget bounds the bytes of row values read ahead of the sink: the source
// and the snapshot take a transaction's Bytes before handing it on, the
// sink gives them back once it is in Redis (Txn.Release). A transaction
// larger than the whole budget waits until nothing else is held, then
// goes alone.
type Budget struct {
	sem  *semaphore.Weighted
	max  int64
	held atomic.Int64
}

// NewBudget returns a budget of max bytes.
func NewBudget(max int64) *Budget {
	return &Budget{sem: semaphore.NewWeighted(max), max: max}
}

// Acquire waits until t's bytes fit, or ctx is done (its error).
func (b *Budget) Acquire(ctx context.Context, t *Txn) error {
	if b == nil {
		return nil
	}
	n := min(max(int64(t.Bytes), 1), b.max)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return err
	}
	t.held, t.budget = n, b
	b.held.Add(n)
	return nil
}

// Held returns the bytes taken and not yet given back.
func (b *Budget) Held() int64 { return b.held.Load() }

// Release gives back what Acquire took for t (once; nil-safe).
func (t *Txn) Release() {
	if t.budget != nil {
		t.budget.held.Add(-t.held)
		t.budget.sem.Release(t.held)
		t.budget, t.held = nil, 0
	}
}

// valueBytes estimates the memory a decoded row value takes.
func valueBytes(v any) int {
	switch x := v.(type) {
	case string:
		return 16 + len(x)
	case []byte:
		return 24 + len(x)
	}
	return 16
}

// rowBytes estimates the memory of a decoded row.
func rowBytes(row []any) int {
	n := 24
	for _, v := range row {
		n += valueBytes(v)
	}
	return n
}
