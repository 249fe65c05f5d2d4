package seckill

import (
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/time/rate"
)

// limiter keeps one token bucket per key (user id or client IP) in a
// bounded cache; a key idle for a minute starts with a full bucket again.
type limiter struct {
	rate  rate.Limit
	burst int
	c     *otter.Cache[string, *rate.Limiter]
}

func newLimiter(perSecond float64, burst int) *limiter {
	if perSecond <= 0 {
		return nil
	}
	if burst < 1 {
		burst = max(1, int(perSecond))
	}
	return &limiter{
		rate:  rate.Limit(perSecond),
		burst: burst,
		c: otter.Must(&otter.Options[string, *rate.Limiter]{
			MaximumSize:      1 << 20,
			ExpiryCalculator: otter.ExpiryAccessing[string, *rate.Limiter](time.Minute),
		}),
	}
}

// exhausted reports whether key's bucket is empty, without taking a
// token; a nil limiter is never exhausted.
func (l *limiter) exhausted(key string) bool {
	if l == nil {
		return false
	}
	lim, ok := l.c.GetIfPresent(key)
	return ok && lim.Tokens() < 1
}

// allow takes a token for key; a nil limiter allows everything.
func (l *limiter) allow(key string) bool {
	if l == nil {
		return true
	}
	lim, ok := l.c.GetIfPresent(key)
	if !ok {
		lim, _ = l.c.ComputeIfAbsent(key, func() (*rate.Limiter, bool) {
			return rate.NewLimiter(l.rate, l.burst), false
		})
	}
	return lim.Allow()
}
