package leader

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// Config configures the leases (YAML section ha).
type Config struct {
	// LeaseTTL is how long a lease outlives its holder's last renewal: a
	// standby takes over at most LeaseTTL + PollInterval after the leader
	// died or froze.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// RenewInterval is how often the holder renews; at most LeaseTTL/2, so
	// one lost renewal does not cost the lease.
	RenewInterval time.Duration `yaml:"renew_interval"`
	// PollInterval is how often a standby tries to take the lease.
	PollInterval time.Duration `yaml:"poll_interval"`
	// ID names this process in the lease (logs, /readyz); default
	// host:pid.
	ID string `yaml:"id"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 3 * time.Second
	}
	if c.RenewInterval == 0 {
		c.RenewInterval = c.LeaseTTL / 3
	}
	if c.PollInterval == 0 {
		c.PollInterval = 250 * time.Millisecond
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = host + ":" + strconv.Itoa(os.Getpid())
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch {
	case c.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("ha.lease_ttl %s: want at least 100ms", c.LeaseTTL)
	case c.RenewInterval <= 0 || c.RenewInterval > c.LeaseTTL/2:
		return fmt.Errorf("ha.renew_interval %s: want more than 0 and at most half of ha.lease_ttl (%s)", c.RenewInterval, c.LeaseTTL)
	case c.PollInterval <= 0 || c.PollInterval > c.LeaseTTL:
		return fmt.Errorf("ha.poll_interval %s: want more than 0 and at most ha.lease_ttl (%s)", c.PollInterval, c.LeaseTTL)
	}
	return nil
}
