package seckill

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/cachesync/cachesync/sink"
)

// Config configures the flash sale: reservations over HTTP, the Kafka
// order pipeline, the lifecycle jobs and the drift check.
type Config struct {
	// Enabled switches the whole feature on.
	Enabled bool `yaml:"enabled"`
	// Database holds the sk_items, sk_orders and sk_failures tables
	// (seckill/schema.sql).
	Database string `yaml:"database"`
	// KeyPrefix starts every Redis key of the sale; an item's keys are
	// "<prefix>{<id>}:stock|pending|buyers|ready|outbox" (one Cluster hash
	// slot).
	KeyPrefix string `yaml:"key_prefix"`
	// Roles run in this process; all by default. A daemon that only
	// serves reservations leaves "consumer" and "jobs" to another.
	Roles []string `yaml:"roles"`
	Kafka Kafka    `yaml:"kafka"`
	// Account is the sale's own MySQL account (optional; see Account).
	Account Account `yaml:"mysql"`
	// ProduceTimeout bounds the wait for Kafka to acknowledge an order;
	// past it the order stays in the outbox, to be produced again by the
	// jobs leader, and the client gets 202.
	ProduceTimeout time.Duration `yaml:"produce_timeout"`
	// OutboxAge is how old an order still in the outbox (not acknowledged
	// by Kafka: its process crashed, or its produce timed out) must be
	// before the jobs leader produces it again. It must exceed
	// ProduceTimeout, so that the API's own produce is over; default 5s,
	// or ProduceTimeout + 2s when that is longer.
	OutboxAge time.Duration `yaml:"outbox_age"`
	// UnpaidTimeout is how long a created order may stay unpaid before
	// the timeout job cancels it and returns its unit of stock.
	UnpaidTimeout time.Duration `yaml:"unpaid_timeout"`
	// OrphanAge is how old a pending reservation without an order row
	// must be before the reaper releases it (an order sent to the
	// dead-letter topic, or lost with Kafka's data). A reservation whose
	// order is still in the outbox is never released: it waits for Kafka.
	OrphanAge time.Duration `yaml:"orphan_age"`
	// JobInterval is how often the timeout and orphan jobs run.
	JobInterval time.Duration `yaml:"job_interval"`
	// CheckInterval runs the drift check inside the daemon this often;
	// 0 disables it (the `cachesync check` command still works).
	CheckInterval time.Duration `yaml:"check_interval"`
	// Retry governs transient consumer failures before dead-lettering.
	Retry Retry `yaml:"retry"`
	// Limits are per user and per client IP, in requests per second.
	Limits Limits `yaml:"limits"`
	// Auth says how buyers are identified; required with the api role.
	Auth auth.Config `yaml:"auth"`
	// TrustedProxies are the addresses (CIDR, or single IPs) of the
	// reverse proxies in front of the daemon. Only a request from one of
	// them has its X-Forwarded-For read for the client address (of the
	// per-IP limits); from anyone else the header is ignored.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// AdminToken protects the /admin endpoints (Bearer token) on the
	// admin listener: at least MinAdminToken bytes; empty disables them.
	// There is no default: set it with CACHESYNC_ADMIN_TOKEN.
	AdminToken string `yaml:"admin_token"`
}

// Kafka configures the brokers and topics.
type Kafka struct {
	Brokers []string `yaml:"brokers"`
	Topic   string   `yaml:"topic"`
	// DeadLetterTopic receives orders that could not be stored.
	DeadLetterTopic string `yaml:"dead_letter_topic"`
	Group           string `yaml:"group"`
	// SessionTimeout of the consumer group: how long a dead member
	// keeps its partitions.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// InstanceID makes this process's consumer a static member of the
	// group (KIP-345): restarted with the same id after a crash, it takes
	// its own place back at once instead of waiting out the dead member's
	// session and a rebalance. Two live consumers with one id fence each
	// other, so it must be unique per process and stable across its
	// restarts. Default "cachesync-<hostname>-<mysql.server_id>"
	// (DefaultInstanceID): the host name tells machines and pods apart
	// (a StatefulSet pod keeps its name), mysql.server_id tells apart the
	// daemons of one host (it must be unique per daemon already: MySQL
	// drops a replica whose id another one uses). Letters, digits, '.',
	// '_' and '-', at most 249. Empty (only for a Config built in code;
	// the configuration file's loader fills the default): a dynamic member.
	InstanceID string `yaml:"instance_id"`
	Username   string `yaml:"username"`
	Password   string `yaml:"password"`
	// Mechanism is the SASL mechanism when a username is set:
	// SCRAM-SHA-256 (default), SCRAM-SHA-512 or PLAIN. PLAIN sends the
	// password as it is, so it is refused without TLS; SCRAM never sends
	// it and is allowed without TLS (the orders still travel in clear).
	Mechanism string `yaml:"mechanism"`
	// TLS encrypts the connections to the brokers (absent: plaintext).
	TLS tlsconf.Config `yaml:"tls"`
}

// Retry is an exponential backoff with a bounded number of attempts.
type Retry struct {
	Attempts int           `yaml:"attempts"`
	Initial  time.Duration `yaml:"initial"`
	Max      time.Duration `yaml:"max"`
}

// Limits are token-bucket rates of reservations; 0 disables a limit.
// PerUser keys on the verified user; PerIP on the client address (see
// TrustedProxies) and is on by default (DefaultPerIP).
type Limits struct {
	PerUser   float64  `yaml:"per_user"`
	UserBurst int      `yaml:"user_burst"`
	PerIP     *float64 `yaml:"per_ip"`
	IPBurst   int      `yaml:"ip_burst"`
}

// DefaultPerIP is the per-IP reservation rate when limits.per_ip is not
// set: a person clicks less often; behind a NAT or a proxy not listed in
// trusted_proxies, many people share one address: raise it or list the
// proxy.
const DefaultPerIP = 20.0

// DefaultOutboxAge is outbox_age unless produce_timeout is 3s or more:
// an order left by a crash reaches Kafka within about this long, plus
// job_interval, once a jobs leader runs.
const DefaultOutboxAge = 5 * time.Second

// MinAdminToken is the shortest admin token accepted, in bytes.
const MinAdminToken = 32

// Roles.
const (
	RoleAPI      = "api"      // reservation, order and admin endpoints
	RoleConsumer = "consumer" // Kafka → MySQL
	RoleJobs     = "jobs"     // unpaid timeout, outbox, orphan reaper, rebuilds, periodic check
)

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Database == "" {
		c.Database = "shop"
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "sk:"
	}
	if len(c.Roles) == 0 {
		c.Roles = []string{RoleAPI, RoleConsumer, RoleJobs}
	}
	if len(c.Kafka.Brokers) == 0 {
		c.Kafka.Brokers = []string{"127.0.0.1:9092"}
	}
	if c.Kafka.Topic == "" {
		c.Kafka.Topic = "cachesync.orders"
	}
	if c.Kafka.DeadLetterTopic == "" {
		c.Kafka.DeadLetterTopic = c.Kafka.Topic + ".dlq"
	}
	if c.Kafka.Group == "" {
		c.Kafka.Group = "cachesync-orders"
	}
	if c.Kafka.SessionTimeout == 0 {
		c.Kafka.SessionTimeout = 10 * time.Second
	}
	if c.Kafka.Username != "" && c.Kafka.Mechanism == "" {
		c.Kafka.Mechanism = "SCRAM-SHA-256"
	}
	if c.ProduceTimeout == 0 {
		c.ProduceTimeout = 3 * time.Second
	}
	if c.OutboxAge == 0 {
		c.OutboxAge = max(DefaultOutboxAge, c.ProduceTimeout+2*time.Second)
	}
	if c.UnpaidTimeout == 0 {
		c.UnpaidTimeout = 15 * time.Minute
	}
	if c.OrphanAge == 0 {
		c.OrphanAge = 10 * time.Minute
	}
	if c.JobInterval == 0 {
		c.JobInterval = 5 * time.Second
	}
	if c.Retry.Attempts == 0 {
		c.Retry.Attempts = 5
	}
	if c.Retry.Initial == 0 {
		c.Retry.Initial = 100 * time.Millisecond
	}
	if c.Retry.Max == 0 {
		c.Retry.Max = 5 * time.Second
	}
	if c.Limits.PerIP == nil {
		v := DefaultPerIP
		c.Limits.PerIP = &v
	}
	c.Auth.SetDefaults()
}

var (
	identRE    = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	instanceRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,249}$`) // Kafka's rule for group.instance.id
	notInID    = regexp.MustCompile(`[^A-Za-z0-9._-]+`)
)

// DefaultInstanceID is seckill.kafka.instance_id when none is set:
// "cachesync-<hostname>-<serverID>", stable across restarts of one daemon
// and distinct between the daemons of one host (see Kafka.InstanceID).
func DefaultInstanceID(serverID uint32) string {
	host, _ := os.Hostname()
	host = notInID.ReplaceAllString(host, "-")
	if host == "" {
		host = "localhost"
	}
	id := fmt.Sprintf("-%d", serverID)
	return "cachesync-" + host[:min(len(host), 249-len("cachesync-")-len(id))] + id
}

// Validate reports the first problem, naming the field.
func (c *Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	if err := c.Account.validate(); err != nil {
		return err
	}
	if !identRE.MatchString(c.Database) {
		return fmt.Errorf("seckill.database %q: want letters, digits and _", c.Database)
	}
	if strings.ContainsAny(c.KeyPrefix, "{}") {
		return fmt.Errorf("seckill.key_prefix %q: must not contain braces (the item id is the hash tag)", c.KeyPrefix)
	}
	seen := map[string]bool{}
	for _, r := range c.Roles {
		switch r {
		case RoleAPI, RoleConsumer, RoleJobs:
		default:
			return fmt.Errorf("seckill.roles: %q: want api, consumer or jobs", r)
		}
		if seen[r] {
			return fmt.Errorf("seckill.roles: %q listed twice", r)
		}
		seen[r] = true
	}
	for _, b := range c.Kafka.Brokers {
		if !strings.Contains(b, ":") {
			return fmt.Errorf("seckill.kafka.brokers: %q: want host:port", b)
		}
	}
	if c.Kafka.Topic == c.Kafka.DeadLetterTopic {
		return fmt.Errorf("seckill.kafka.dead_letter_topic: must differ from topic %q", c.Kafka.Topic)
	}
	if c.Kafka.InstanceID != "" && !instanceRE.MatchString(c.Kafka.InstanceID) {
		return fmt.Errorf("seckill.kafka.instance_id %q: want 1 to 249 letters, digits, '.', '_' or '-'", c.Kafka.InstanceID)
	}
	if c.Kafka.SessionTimeout < time.Second {
		return fmt.Errorf("seckill.kafka.session_timeout %s: want at least 1s", c.Kafka.SessionTimeout)
	}
	switch c.Kafka.Mechanism {
	case "", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN":
	default:
		return fmt.Errorf("seckill.kafka.mechanism %q: want SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN", c.Kafka.Mechanism)
	}
	if err := c.Kafka.TLS.Validate("seckill.kafka.tls"); err != nil {
		return err
	}
	if c.Kafka.Username != "" && c.Kafka.Mechanism == "PLAIN" && !c.Kafka.TLS.On() {
		return errors.New("seckill.kafka.mechanism PLAIN sends the password in clear: configure seckill.kafka.tls, or use SCRAM-SHA-256 or SCRAM-SHA-512")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"produce_timeout", c.ProduceTimeout}, {"unpaid_timeout", c.UnpaidTimeout},
		{"orphan_age", c.OrphanAge}, {"outbox_age", c.OutboxAge}, {"job_interval", c.JobInterval},
		{"retry.initial", c.Retry.Initial}, {"retry.max", c.Retry.Max},
	} {
		if d.v < time.Millisecond {
			return fmt.Errorf("seckill.%s %s: want at least 1ms", d.name, d.v)
		}
	}
	if c.OrphanAge <= c.ProduceTimeout {
		return fmt.Errorf("seckill.orphan_age %s: must exceed produce_timeout %s, or reservations still being produced are reaped", c.OrphanAge, c.ProduceTimeout)
	}
	if c.OutboxAge <= c.ProduceTimeout {
		return fmt.Errorf("seckill.outbox_age %s: must exceed produce_timeout %s, or orders the API is still producing are produced twice", c.OutboxAge, c.ProduceTimeout)
	}
	if c.CheckInterval < 0 {
		return fmt.Errorf("seckill.check_interval %s: want 0 (off) or more", c.CheckInterval)
	}
	if c.Retry.Attempts < 1 || c.Retry.Attempts > 100 {
		return fmt.Errorf("seckill.retry.attempts %d: want 1..100", c.Retry.Attempts)
	}
	if c.AdminToken != "" && len(c.AdminToken) < MinAdminToken {
		return fmt.Errorf("seckill.admin_token: %d bytes, want at least %d (random, e.g. from openssl rand -hex 32), or none to turn the admin endpoints off", len(c.AdminToken), MinAdminToken)
	}
	if c.Limits.PerUser < 0 || c.perIP() < 0 || c.Limits.UserBurst < 0 || c.Limits.IPBurst < 0 {
		return fmt.Errorf("seckill.limits: rates and bursts must not be negative")
	}
	if _, err := parseProxies(c.TrustedProxies); err != nil {
		return err
	}
	return c.Auth.Validate(c.has(RoleAPI))
}

// perIP is the per-IP rate (0 before SetDefaults).
func (c *Config) perIP() float64 {
	if c.Limits.PerIP == nil {
		return 0
	}
	return *c.Limits.PerIP
}

// has reports whether role runs here.
func (c *Config) has(role string) bool {
	for _, r := range c.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// CheckRules refuses a rule set without the known-items rule: a member
// rule keeping every id of sk_items in ItemsKey, which tells a request for
// a made-up item id (404) from one for an item whose keys are being built
// (503). Nothing when the sale is off.
func (c *Config) CheckRules(rules []sink.RuleConfig) error {
	if !c.Enabled {
		return nil
	}
	table := c.Database + ".sk_items"
	key := ItemsKey(c.KeyPrefix)
	want := fmt.Sprintf(`{table: %s, kind: member, key: %q, member: "{id}"}`, table, key)
	for i, r := range rules {
		if r.Kind != sink.KindMember || !strings.EqualFold(r.Table, table) || r.Key != key {
			continue
		}
		if !strings.EqualFold(r.Member, "{id}") || r.When != nil || r.Value != "" || (r.Op != "" && r.Op != sink.OpSync) {
			return fmt.Errorf("sink.rules[%d]: the sale's known-items rule must be exactly %s (op sync, no when, no value): every row of %s belongs in %s", i, want, table, key)
		}
		return nil
	}
	return fmt.Errorf("sink.rules: the sale needs the known-items rule %s: item requests answer 404 for an id not in that set (see README, Flash sale)", want)
}

// VersionStock marks versioned the mirror rules that keep the items'
// stock key: the rebuild writes that key outside the binlog's order, and
// its version keeps a CDC write older than the rebuild's read from undoing
// it (see sink.RuleConfig.Versioned).
func (c *Config) VersionStock(rules []sink.RuleConfig) {
	probe := KeysFor(c.KeyPrefix, 1).Stock
	for i := range rules {
		r := &rules[i]
		if r.Kind != sink.KindMirror || !strings.EqualFold(r.Table, c.Database+".sk_items") {
			continue
		}
		if t, err := sink.ParseTemplate(r.Key); err == nil && t.Match(probe) {
			r.Versioned = true
		}
	}
}
