package seckill

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/IBM/sarama"
	"github.com/rs/zerolog"
)

// scriptedGroup is a consumer group whose Consume returns the errors of
// results in turn (nil: a session that ended at a rebalance), then
// ErrClosedConsumerGroup; it records when each Consume was called.
type scriptedGroup struct {
	sarama.ConsumerGroup // the methods Run does not call
	results              []error
	calls                []time.Time
	errs                 chan error
}

func (g *scriptedGroup) Consume(context.Context, []string, sarama.ConsumerGroupHandler) error {
	g.calls = append(g.calls, time.Now())
	if i := len(g.calls) - 1; i < len(g.results) {
		return g.results[i]
	}
	return sarama.ErrClosedConsumerGroup
}

func (g *scriptedGroup) Errors() <-chan error { return g.errs }

// TestConsumerRejoinBacksOff: after a failed Consume, Run rejoins after a
// wait growing from about 1 s to at most 10 s (±50% jitter); after a
// rebalance it rejoins at once, and the waits start over.
func TestConsumerRejoinBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fail := errors.New("kafka: coordinator not available")
		var results []error
		for range 10 {
			results = append(results, fail)
		}
		results = append(results, nil, fail)
		g := &scriptedGroup{results: results, errs: make(chan error)}
		c := &Consumer{group: g, log: zerolog.Nop()}
		if err := c.Run(context.Background()); err != nil {
			t.Fatalf("Run: %v, want nil once the group is closed", err)
		}
		close(g.errs)

		if len(g.calls) != len(results)+1 {
			t.Fatalf("%d calls of Consume, want %d", len(g.calls), len(results)+1)
		}
		waits := make([]time.Duration, len(g.calls)-1)
		var sum time.Duration
		for i := range waits {
			waits[i] = g.calls[i+1].Sub(g.calls[i])
			if i < 10 {
				sum += waits[i]
			}
		}
		within := func(d, base time.Duration) bool { return d >= base/2 && d <= base*3/2+time.Millisecond }
		if !within(waits[0], time.Second) {
			t.Errorf("first wait %v, want 1s ±50%%", waits[0])
		}
		for i, w := range waits[:10] {
			if w > 15*time.Second+time.Millisecond {
				t.Errorf("wait %d: %v, above the 10s cap +50%%", i, w)
			}
		}
		if !within(waits[9], 10*time.Second) {
			t.Errorf("tenth wait %v, want the cap, 10s ±50%%", waits[9])
		}
		// 1, 1.5, 2.25 … 7.6, then 10s: about 61s, 30s at least; a fixed
		// 1s wait would give 15s at most.
		if sum < 30*time.Second {
			t.Errorf("10 waits took %v, want them to grow (30s at least)", sum)
		}
		if waits[10] != 0 {
			t.Errorf("rejoin after a rebalance waited %v, want at once", waits[10])
		}
		if !within(waits[11], time.Second) {
			t.Errorf("wait after a rebalance then an error: %v, want 1s ±50%% again", waits[11])
		}
	})
}
