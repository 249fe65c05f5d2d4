package cache

import (
	"fmt"
	"time"
)

// Config configures the read path.
type Config struct {
	// L1Size bounds the entries held in process (0 disables L1).
	L1Size int `yaml:"l1_size"`
	// L1TTL bounds how long an entry stays in L1 even if no invalidation
	// arrives (a last resort; invalidations normally drop entries).
	L1TTL time.Duration `yaml:"l1_ttl"`
	// TTL of values filled into Redis, jittered by ±Jitter so keys filled
	// together do not expire together.
	TTL    time.Duration `yaml:"ttl"`
	Jitter float64       `yaml:"jitter"`
	// NotFoundTTL is how long a "no such row" answer is cached.
	NotFoundTTL time.Duration `yaml:"not_found_ttl"`
	// LeaseTTL bounds a fill: a load slower than this is not cached.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// LeaseWait is how long a reader that finds another process's lease
	// waits for that fill before loading without filling.
	LeaseWait time.Duration `yaml:"lease_wait"`
	// LoadTimeout bounds a shared fetch (Redis, the loader, the fill). The
	// fetch is not canceled with the caller that started it, since other
	// callers of the same key wait for it; this is its own limit.
	LoadTimeout time.Duration `yaml:"load_timeout"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.L1Size == 0 {
		c.L1Size = 100_000
	}
	if c.L1TTL == 0 {
		c.L1TTL = time.Minute
	}
	if c.TTL == 0 {
		c.TTL = time.Hour
	}
	if c.Jitter == 0 {
		c.Jitter = 0.1
	}
	if c.NotFoundTTL == 0 {
		c.NotFoundTTL = 5 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 3 * time.Second
	}
	if c.LeaseWait == 0 {
		c.LeaseWait = 50 * time.Millisecond
	}
	if c.LoadTimeout == 0 {
		c.LoadTimeout = 10 * time.Second
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch {
	case c.L1Size < 0:
		return fmt.Errorf("cache.l1_size %d: want >= 0", c.L1Size)
	case c.TTL < time.Second:
		return fmt.Errorf("cache.ttl %s: want at least 1s", c.TTL)
	case c.Jitter < 0 || c.Jitter >= 1:
		return fmt.Errorf("cache.jitter %g: want in [0, 1)", c.Jitter)
	case c.NotFoundTTL < 0 || c.NotFoundTTL > c.TTL:
		return fmt.Errorf("cache.not_found_ttl %s: want between 0 and cache.ttl", c.NotFoundTTL)
	case c.LeaseTTL < 10*time.Millisecond:
		return fmt.Errorf("cache.lease_ttl %s: want at least 10ms", c.LeaseTTL)
	case c.LoadTimeout < 10*time.Millisecond:
		return fmt.Errorf("cache.load_timeout %s: want at least 10ms", c.LoadTimeout)
	case c.L1TTL < 0:
		return fmt.Errorf("cache.l1_ttl %s: want >= 0", c.L1TTL)
	}
	return nil
}
