package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"
)

// truncate deletes the keys the rules of table write (with their versions
// and fill leases), after a TRUNCATE emptied it, announcing them to L1
// subscribers: exactly what deleting every row would have done. A key a
// stateful rule of another table also writes is kept. Each page of SCAN
// is one fenced script call; interrupted, the transaction is replayed
// from the checkpoint before it and the deletion done again.
func (a *Applier) truncate(ctx context.Context, table string, f Fence) (int, error) {
	total := 0
	for _, tp := range a.rules.truncated(table) {
		err := a.scan(ctx, tp.Glob(), func(keys []string) error {
			var data []string
			for _, k := range keys {
				if tp.Match(k) && !a.rules.keptFor(table, k) {
					data = append(data, k)
				}
			}
			if len(data) == 0 {
				return nil
			}
			var other []string
			for _, d := range data {
				other = append(other, a.ks.Version(d), a.ks.Lease(d))
			}
			n, err := a.deleteKeys(ctx, f, data, other)
			total += n
			return err
		})
		if err != nil {
			return total, fmt.Errorf("truncate %s (keys %s): %w", table, tp.Glob(), err)
		}
	}
	return total, nil
}

// truncateRetrying runs truncate until it succeeds, is refused, or ctx is
// done (then false).
func (a *Applier) truncateRetrying(ctx context.Context, table string, f Fence) (done bool, err error) {
	fields := func(e *zerolog.Event) *zerolog.Event { return e.Str("table", table) }
	err = a.retry(ctx, "deleting the keys of a truncated table failed; retrying", fields, func() error {
		t0 := time.Now()
		n, err := a.truncate(ctx, table, f)
		if err == nil {
			done = true
			a.log.Warn().Str("table", table).Int("keys", n).Dur("took", time.Since(t0)).Msg("TRUNCATE of a ruled table: deleted the keys its rules write")
			return nil
		}
		for _, r := range refusals {
			if errors.Is(err, r.err) {
				return backoff.Permanent(err)
			}
		}
		if a.failure(err) {
			return backoff.Permanent(fmt.Errorf("%w: %v", ErrScript, err))
		}
		return err
	})
	return done, err
}
