package sink

import (
	"fmt"
	"regexp"
	"time"

	"github.com/cachesync/cachesync/keyspace"
)

// Config configures how transactions are applied to Redis.
type Config struct {
	// KeyPrefix prefixes cachesync's own keys (versions, leases,
	// checkpoint, sequence); see package keyspace.
	KeyPrefix string `yaml:"key_prefix"`
	// Source names this daemon's binlog source when several MySQL
	// primaries write one Redis (one daemon each), or on a Redis Cluster
	// (default "main" there): the source's checkpoint, seq, snapshot and
	// lease keys carry the hash tag {source} (see package keyspace), so
	// each source has its own and they share one slot. Empty on a
	// standalone Redis keeps the untagged names of a single source.
	Source string `yaml:"source"`
	// Cluster is set from redis.mode: versions and leases go in their
	// key's slot, and batches are applied per slot.
	Cluster bool `yaml:"-"`
	// Channel is the pub/sub channel of invalidation messages (default
	// "cachesync:invalidations", with ":<source>" after it when Source is
	// set: each source numbers its messages, so each has its channel).
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
		if c.Source != "" { // each source counts its own seq
			c.Channel += ":" + c.Source
		}
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

// Keyspace names cachesync's own keys for this configuration.
func (c *Config) Keyspace() keyspace.Keyspace {
	return keyspace.Keyspace{Prefix: c.KeyPrefix, Source: c.Source, Cluster: c.Cluster}
}

// sourceName is what a source name may be: it is a hash tag in key names.
var sourceName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Source != "" && !sourceName.MatchString(c.Source) {
		return fmt.Errorf("sink.source %q: want 1-64 letters, digits, '_', '.' or '-' (it is a hash tag in key names)", c.Source)
	}
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
