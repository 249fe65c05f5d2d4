package sink

import (
	"fmt"
	"time"
)

// Config configures how transactions are applied to Redis.
type Config struct {
	// KeyPrefix prefixes cachesync's own keys (versions, leases,
	// checkpoint, sequence); see package keyspace.
	KeyPrefix string `yaml:"key_prefix"`
	// Channel is the pub/sub channel of invalidation messages.
	Channel string `yaml:"channel"`
	// BatchChanges caps the row changes applied in one script call.
	// Consecutive transactions share a call up to this size; a larger
	// transaction is never cut by it (see mysql.max_txn_changes).
	BatchChanges int `yaml:"batch_changes"`
	// BatchBytes caps, the same way, the estimated bytes of the row
	// values in one script call (see mysql.max_txn_bytes).
	BatchBytes int `yaml:"batch_bytes"`
	// TombstoneTTL is how long the version of a deleted key is kept so a
	// replay cannot resurrect the key.
	TombstoneTTL time.Duration `yaml:"tombstone_ttl"`
	// Rules say what each row change does in Redis.
	Rules []RuleConfig `yaml:"rules"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.KeyPrefix == "" {
		c.KeyPrefix = "cachesync:"
	}
	if c.Channel == "" {
		c.Channel = "cachesync:invalidations"
	}
	if c.BatchChanges == 0 {
		c.BatchChanges = 2000
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = 8 << 20
	}
	if c.TombstoneTTL == 0 {
		c.TombstoneTTL = 24 * time.Hour
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.BatchChanges < 1 || c.BatchChanges > 100_000 {
		return fmt.Errorf("sink.batch_changes %d: want 1..100000", c.BatchChanges)
	}
	if c.BatchBytes < 64<<10 {
		return fmt.Errorf("sink.batch_bytes %d: want at least 64 KiB (65536)", c.BatchBytes)
	}
	if c.TombstoneTTL < time.Minute {
		return fmt.Errorf("sink.tombstone_ttl %s: want at least 1m", c.TombstoneTTL)
	}
	if len(c.Rules) == 0 {
		return fmt.Errorf("sink.rules: at least one rule is needed")
	}
	_, err := CompileRules(c.Rules)
	if err != nil {
		return fmt.Errorf("sink.%w", err)
	}
	return nil
}
