package seckill

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestConsumerHealthCheck: the consumer's /readyz verdict in each state.
func TestConsumerHealthCheck(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	const grace = 10 * time.Second
	for _, tc := range []struct {
		name string
		do   func(h *consumerHealth)
		at   time.Duration // after t0
		want string        // in the error; "" for ready
	}{
		{"before the first session", func(*consumerHealth) {}, 0, "not in the group yet"},
		{"join failing", func(h *consumerHealth) { h.joinFailed(errors.New("coordinator not available")) }, 0, "joining the group: coordinator not available"},
		{"in session", func(h *consumerHealth) { h.joinFailed(errors.New("x")); h.started("m1") }, 0, ""},
		{"rebalancing", func(h *consumerHealth) { h.started("m1"); h.ended(t0) }, grace, ""},
		{"no session past the grace", func(h *consumerHealth) { h.started("m1"); h.ended(t0) }, grace + time.Second, "no group session for 11s"},
		{"rejoin failing", func(h *consumerHealth) { h.started("m1"); h.ended(t0); h.joinFailed(errors.New("refused")) }, time.Second, "joining the group: refused"},
		{"store failing", func(h *consumerHealth) { h.started("m1"); h.stored(errors.New("dead-letter: down")) }, 0, "storing orders: dead-letter: down"},
		{"stored again", func(h *consumerHealth) { h.started("m1"); h.stored(errors.New("down")); h.stored(nil) }, 0, ""},
		{"fenced", func(h *consumerHealth) { h.started("m1"); h.fence() }, 0, "another consumer joined with this instance id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h consumerHealth
			tc.do(&h)
			err := h.check(t0.Add(tc.at), grace)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("check: %v, want ready", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("check: %v, want %q", err, tc.want)
			}
		})
	}
}
