// Package config loads cachesync's YAML configuration: defaults first, then
// environment overrides for addresses and secrets, then validation whose
// errors name the field and the problem. Unknown fields are rejected.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/goods"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/seckill"
	"github.com/cachesync/cachesync/sink"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	MySQL binlog.Config `yaml:"mysql"`
	Redis Redis         `yaml:"redis"`
	Sink  sink.Config   `yaml:"sink"`
	HTTP  api.Config    `yaml:"http"`
	Log   Log           `yaml:"log"`
	Cache cache.Config  `yaml:"cache"`
	Goods goods.Config  `yaml:"goods"`
	// Seckill is the flash sale (off unless seckill.enabled).
	Seckill seckill.Config `yaml:"seckill"`
	// HA: the leases that make one process the CDC writer and one the
	// sale's jobs runner when several run.
	HA leader.Config `yaml:"ha"`
	// Admin is the operators' listener: metrics, probes, pprof, /admin.
	Admin api.AdminConfig `yaml:"admin"`
	// Runtime tunes Go's garbage collector.
	Runtime Runtime `yaml:"runtime"`
}

// Redis configures the Redis connection.
type Redis struct {
	// Mode is how the daemon finds Redis: "standalone" (the default)
	// connects to Addr; "sentinel" asks the Sentinels at SentinelAddrs for
	// the master of MasterName and follows it through failovers; "cluster"
	// learns a Redis Cluster's nodes and slots from the seed nodes at Addrs
	// (the sink then applies per hash slot: see sink.Applier.applySlots).
	Mode string `yaml:"mode"`
	// Addr is the server of standalone mode. Sentinel and cluster modes
	// refuse it.
	Addr string `yaml:"addr"`
	// Addrs are the seed nodes of cluster mode: any nodes of the cluster,
	// the client asks them for the rest. The other modes refuse it.
	Addrs []string `yaml:"addrs"`
	// Username and Password apply to the data servers in every mode (in
	// sentinel mode, to whichever node is the master; in cluster mode, to
	// every node). DB too, but a Redis Cluster has only database 0.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	DB       int    `yaml:"db"`
	// MasterName, SentinelAddrs, SentinelUsername and SentinelPassword are
	// for sentinel mode only; the other modes refuse them. The Sentinel
	// credentials are those of the Sentinels themselves, not of the master.
	MasterName       string   `yaml:"master_name"`
	SentinelAddrs    []string `yaml:"sentinel_addrs"`
	SentinelUsername string   `yaml:"sentinel_username"`
	SentinelPassword string   `yaml:"sentinel_password"`
	// TLS encrypts every connection (absent: plaintext). In sentinel mode
	// it applies to the Sentinels and to the master alike, as go-redis
	// dials both with one configuration: the Sentinels must speak TLS too.
	// In cluster mode it applies to every node.
	TLS tlsconf.Config `yaml:"tls"`
}

// Redis modes.
const (
	RedisStandalone = "standalone"
	RedisSentinel   = "sentinel"
	RedisCluster    = "cluster"
)

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// Environment variables that override the file (addresses and secrets).
var envOverrides = []struct {
	name  string
	field string // as validation errors name it
	set   func(*Config, string)
}{
	{"CACHESYNC_MYSQL_ADDR", "mysql.addr", func(c *Config, v string) { c.MySQL.Addr = v }},
	{"CACHESYNC_MYSQL_USER", "mysql.user", func(c *Config, v string) { c.MySQL.User = v }},
	{"CACHESYNC_MYSQL_PASSWORD", "mysql.password", func(c *Config, v string) { c.MySQL.Password = v }},
	{"CACHESYNC_REDIS_ADDR", "redis.addr", func(c *Config, v string) { c.Redis.Addr = v }},
	{"CACHESYNC_REDIS_ADDRS", "redis.addrs", func(c *Config, v string) { c.Redis.Addrs = splitList(v) }},
	{"CACHESYNC_REDIS_USERNAME", "redis.username", func(c *Config, v string) { c.Redis.Username = v }},
	{"CACHESYNC_REDIS_PASSWORD", "redis.password", func(c *Config, v string) { c.Redis.Password = v }},
	{"CACHESYNC_REDIS_MASTER_NAME", "redis.master_name", func(c *Config, v string) { c.Redis.MasterName = v }},
	{"CACHESYNC_REDIS_SENTINEL_ADDRS", "redis.sentinel_addrs", func(c *Config, v string) { c.Redis.SentinelAddrs = splitList(v) }},
	{"CACHESYNC_REDIS_SENTINEL_PASSWORD", "redis.sentinel_password", func(c *Config, v string) { c.Redis.SentinelPassword = v }},
	{"CACHESYNC_HTTP_ADDR", "http.addr", func(c *Config, v string) { c.HTTP.Addr = v }},
	{"CACHESYNC_ADMIN_ADDR", "admin.addr", func(c *Config, v string) { c.Admin.Addr = v }},
	{"CACHESYNC_MYSQL_SERVER_ID", "mysql.server_id", func(c *Config, v string) {
		n, _ := strconv.ParseUint(v, 10, 32) // checked by parseServerID
		c.MySQL.ServerID = uint32(n)
	}},
	{"CACHESYNC_HA_ID", "ha.id", func(c *Config, v string) { c.HA.ID = v }},
	{"CACHESYNC_KAFKA_BROKERS", "seckill.kafka.brokers", func(c *Config, v string) { c.Seckill.Kafka.Brokers = strings.Split(v, ",") }},
	{"CACHESYNC_KAFKA_USERNAME", "seckill.kafka.username", func(c *Config, v string) { c.Seckill.Kafka.Username = v }},
	{"CACHESYNC_KAFKA_PASSWORD", "seckill.kafka.password", func(c *Config, v string) { c.Seckill.Kafka.Password = v }},
	{"CACHESYNC_SECKILL_MYSQL_USER", "seckill.mysql.user", func(c *Config, v string) { c.Seckill.Account.User = v }},
	{"CACHESYNC_SECKILL_MYSQL_PASSWORD", "seckill.mysql.password", func(c *Config, v string) { c.Seckill.Account.Password = v }},
	{"CACHESYNC_ADMIN_TOKEN", "seckill.admin_token", func(c *Config, v string) { c.Seckill.AdminToken = v }},
	{"CACHESYNC_JWT_SECRET", "seckill.auth.jwt.hs256_secret", func(c *Config, v string) { c.Seckill.Auth.JWT.HS256Secret = v }},
	{"CACHESYNC_GATEWAY_SECRET", "seckill.auth.header.secret", func(c *Config, v string) { c.Seckill.Auth.Header.Secret = v }},
}

// splitList splits a comma-separated variable and trims spaces around each
// element; empty elements stay, so that validation reports them.
func splitList(v string) []string {
	l := strings.Split(v, ",")
	for i := range l {
		l[i] = strings.TrimSpace(l[i])
	}
	return l
}

// envChecks refuse environment values that the field's type cannot hold
// (before they are set).
var envChecks = map[string]func(string) error{"CACHESYNC_MYSQL_SERVER_ID": parseServerID}

func parseServerID(v string) error {
	if n, err := strconv.ParseUint(v, 10, 32); err != nil || n == 0 {
		return errors.New("want a number 1..4294967295")
	}
	return nil
}

// EnvNames lists the environment variables that override the file.
func EnvNames() []string {
	names := make([]string, len(envOverrides))
	for i, e := range envOverrides {
		names[i] = e.name
	}
	return names
}

// Load reads, completes and validates the file at path; lookup reads the
// environment (os.LookupEnv in production).
func Load(path string, lookup func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data, lookup)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes data strictly, applies overrides and defaults, validates.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty file")
		}
		return nil, err
	}
	// A second document would be ignored: it is more likely a mistake
	// (two files concatenated) than meant.
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document (a line '---' after the first): put the whole configuration in one")
	}
	fromEnv := map[string]string{} // field -> variable that set it
	if lookup != nil {
		for _, e := range envOverrides {
			if v, ok := lookup(e.name); ok && v != "" {
				if check := envChecks[e.name]; check != nil {
					if err := check(v); err != nil {
						return nil, fmt.Errorf("%s %q (set by environment variable %s): %w", e.field, v, e.name, err)
					}
				}
				e.set(&c, v)
				fromEnv[e.field] = e.name
			}
		}
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		// A bad value from the environment is not in the file: say so.
		// Errors start with the field, then a space, a colon or an index.
		msg := err.Error()
		for field, name := range fromEnv {
			if rest, ok := strings.CutPrefix(msg, field); ok && rest != "" && strings.ContainsRune(" :[", rune(rest[0])) {
				return nil, fmt.Errorf("%w (set by environment variable %s)", err, name)
			}
		}
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills every unset field.
func (c *Config) SetDefaults() {
	c.MySQL.SetDefaults()
	c.Sink.Cluster = c.Redis.Mode == RedisCluster
	if c.Sink.Cluster && c.Sink.Source == "" {
		c.Sink.Source = "main"
	}
	c.Sink.SetDefaults()
	c.HA.SetDefaults()
	c.HTTP.SetDefaults()
	c.Admin.SetDefaults()
	c.Cache.SetDefaults()
	c.Goods.SetDefaults()
	c.Seckill.SetDefaults()
	if c.Seckill.Kafka.InstanceID == "" {
		c.Seckill.Kafka.InstanceID = seckill.DefaultInstanceID(c.MySQL.ServerID)
	}
	if c.Seckill.Enabled {
		c.Seckill.VersionStock(c.Sink.Rules)
	}
	c.Redis.SetDefaults()
	c.Runtime.SetDefaults(c.MySQL)
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
}

// Validate reports the first problem, naming the field.
func (c *Config) Validate() error {
	if err := c.MySQL.Validate(); err != nil {
		return err
	}
	if err := c.Redis.Validate(); err != nil {
		return err
	}
	if err := c.Sink.Validate(); err != nil {
		return err
	}
	if err := c.Cache.Validate(); err != nil {
		return err
	}
	if err := c.Goods.Validate(); err != nil {
		return err
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	if err := c.Admin.Validate(); err != nil {
		return err
	}
	if err := api.CheckAddrs(c.HTTP, c.Admin); err != nil {
		return err
	}
	if err := c.Seckill.Validate(); err != nil {
		return err
	}
	if c.Seckill.Enabled && c.HTTP.WriteTimeout <= c.Seckill.ProduceTimeout {
		return fmt.Errorf("http.write_timeout %s: must exceed seckill.produce_timeout %s, or a reservation's answer is cut off after its order was sent", c.HTTP.WriteTimeout, c.Seckill.ProduceTimeout)
	}
	if err := c.Seckill.CheckRules(c.Sink.Rules); err != nil {
		return err
	}
	if err := c.HA.Validate(); err != nil {
		return err
	}
	if err := c.Runtime.Validate(); err != nil {
		return err
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return fmt.Errorf("log.format %q: want json or console", c.Log.Format)
	}
	return nil
}
