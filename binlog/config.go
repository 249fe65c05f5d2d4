package binlog

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/cachesync/cachesync/internal/tlsconf"
)

// Config configures the connection to the MySQL/MariaDB primary.
type Config struct {
	// Addr is host:port of the server whose binlog is read.
	Addr     string `yaml:"addr"`
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Flavor is "mysql", "mariadb", or "auto" (ask the server).
	Flavor string `yaml:"flavor"`
	// ServerID is the replica id cachesync registers with; it must differ
	// from every other server and replica in the topology.
	ServerID uint32 `yaml:"server_id"`
	// Heartbeat is how often an idle server sends a heartbeat; a
	// connection silent for 3 heartbeats is considered lost.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// MaxTxnChanges splits a larger transaction into pieces applied one
	// after another (not atomically; a warning is logged). Bounds memory
	// and the time Redis spends in one script.
	MaxTxnChanges int `yaml:"max_txn_changes"`
	// MaxTxnBytes does the same by the estimated memory of the decoded
	// rows (a piece holds at least one row event, whatever its size).
	MaxTxnBytes int64 `yaml:"max_txn_bytes"`
	// ReadAheadBytes bounds the decoded rows read ahead of Redis (stream
	// and snapshot): reading waits while Redis is slow or paused.
	ReadAheadBytes int64 `yaml:"read_ahead_bytes"`
	// Start says where to begin when no checkpoint exists or From forces it.
	Start StartConfig `yaml:"start"`
	// TLS encrypts the SQL connections and the replication stream (absent:
	// plaintext).
	TLS tlsconf.Config `yaml:"tls"`
}

// StartConfig selects the first binlog position.
type StartConfig struct {
	// From is "checkpoint" (default: resume from the saved checkpoint; on
	// first start, snapshot the ruled tables then stream), "current" (the
	// server's current position, no snapshot), "position" or "gtid".
	From     string `yaml:"from"`
	Position string `yaml:"position"` // file:pos, for From=position
	GTID     string `yaml:"gtid"`     // GTID set, for From=gtid
}

// Start modes.
const (
	FromCheckpoint = "checkpoint"
	FromCurrent    = "current"
	FromPosition   = "position"
	FromGTID       = "gtid"
)

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:3306"
	}
	if c.User == "" {
		c.User = "root"
	}
	if c.Flavor == "" {
		c.Flavor = "auto"
	}
	if c.ServerID == 0 {
		c.ServerID = 4242
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = time.Second
	}
	if c.MaxTxnChanges == 0 {
		c.MaxTxnChanges = 100_000
	}
	if c.MaxTxnBytes == 0 {
		c.MaxTxnBytes = 8 << 20
	}
	if c.ReadAheadBytes == 0 {
		c.ReadAheadBytes = 64 << 20
	}
	if c.Start.From == "" {
		c.Start.From = FromCheckpoint
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil || host == "" {
		return fmt.Errorf("mysql.addr %q: want host:port", c.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("mysql.addr %q: bad port", c.Addr)
	}
	switch c.Flavor {
	case "auto", "mysql", "mariadb":
	default:
		return fmt.Errorf("mysql.flavor %q: want auto, mysql or mariadb", c.Flavor)
	}
	if c.Heartbeat < 100*time.Millisecond || c.Heartbeat > time.Minute {
		return fmt.Errorf("mysql.heartbeat %s: want between 100ms and 1m", c.Heartbeat)
	}
	if c.MaxTxnChanges < 100 {
		return fmt.Errorf("mysql.max_txn_changes %d: want at least 100", c.MaxTxnChanges)
	}
	if c.MaxTxnBytes < 1<<20 {
		return fmt.Errorf("mysql.max_txn_bytes %d: want at least 1 MiB (1048576)", c.MaxTxnBytes)
	}
	if c.ReadAheadBytes < c.MaxTxnBytes {
		return fmt.Errorf("mysql.read_ahead_bytes %d: want at least max_txn_bytes (%d)", c.ReadAheadBytes, c.MaxTxnBytes)
	}
	switch c.Start.From {
	case FromCheckpoint, FromCurrent:
	case FromPosition:
		pos, err := ParsePosition(c.Start.Position)
		if err == nil {
			_, err = pos.Version()
		}
		if err != nil {
			return fmt.Errorf("mysql.start.position: %w", err)
		}
	case FromGTID:
		if c.Start.GTID == "" {
			return errors.New("mysql.start.gtid: required when mysql.start.from is gtid")
		}
	default:
		return fmt.Errorf("mysql.start.from %q: want checkpoint, current, position or gtid", c.Start.From)
	}
	return c.TLS.Validate("mysql.tls")
}

func (c *Config) hostPort() (string, uint16) {
	host, port, _ := net.SplitHostPort(c.Addr)
	p, _ := strconv.Atoi(port)
	return host, uint16(p)
}
