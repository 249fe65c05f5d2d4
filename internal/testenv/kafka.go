package testenv

// What we found running sarama v1.61.1 against kfake (kafka_test.go checks
// the parts we rely on):
//
//   - Version: Config.Version V2_8_0_0 (sarama's default) and V4_0_0_0 both
//     pass every test here; the tests use V4_0_0_0. kfake refuses what Kafka
//     4 removed (Produce below v3, Fetch below v4), like a real Kafka 4.
//   - Idempotence: sarama's defaults (RequiredAcks WaitForLocal,
//     Net.MaxOpenRequests 5) conflict with Producer.Idempotent; Validate,
//     and so every constructor, refuses the config until RequiredAcks is
//     WaitForAll, Net.MaxOpenRequests is 1 and Producer.Retry.Max is at
//     least 1 (the default 3 is fine).
//   - A produce that the broker stores but answers with REQUEST_TIMED_OUT
//     (a kfake Fault; a real broker does this when replication is slow) is
//     retried by sarama. With idempotence the retry is recognised and each
//     message is stored once, the acknowledged offsets are the stored ones,
//     and per-key order holds. Without idempotence, 20 such answers stored
//     350 to 2,000 extra copies of 10,000 messages.
//   - Closing an idempotent AsyncProducer (Close or AsyncClose) while it is
//     retrying batches fails those batches with ErrShuttingDown ("message
//     received by producer in process of shutting down"), though they may be
//     stored: wait for every message's success or error before closing.
//   - Consumer groups: kfake's default group.min.session.timeout is Kafka's
//     6 s; a sarama Session.Timeout below it fails every JoinGroup ("The
//     provided session timeout is outside the allowed range"), so NewKafka
//     lowers it to 100 ms. kfake has no group.initial.rebalance.delay. With
//     Session.Timeout 1.5 s and Heartbeat.Interval 300 ms: a lone member is
//     assigned in a few milliseconds; a second member joining takes about
//     0.6 s until both have their partitions; after a member's Close
//     (LeaveGroup) the other owns everything again in about 1 s, and after a
//     member that vanished without LeaveGroup in about 2 s.
//   - With Consumer.Offsets.AutoCommit (the default), ConsumerGroup.Close
//     commits what was marked before returning; a new member of the group
//     resumes right after the last marked message. Without it, nothing is
//     committed unless the handler calls session.Commit().
//   - Reading partitions one after another with one sarama.Consumer took
//     about 0.6 s per partition here; consuming them concurrently does not.
//   - Every sarama client leaves one goroutine running after Close,
//     github.com/rcrowley/go-metrics.(*meterArbiter).tick (its metrics
//     registry); a goleak check has to ignore that function.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Kafka is an in-process Kafka-protocol cluster (kfake from franz-go) whose
// brokers listen on 127.0.0.1. It is not a child process like MariaDB and
// Redis: there is no Kafka in Debian, and kfake speaks the protocol well
// enough for sarama's producers, consumers, consumer groups and admin client.
//
// Without KafkaDataDir the data lives in memory and every Start, including a
// restart after Stop, begins with an empty cluster (only the KafkaTopic
// topics). With it, topics, records, committed offsets and producer state
// are written to that directory and survive Stop and Start, or a new Kafka
// on the same directory.
//
// The methods are safe for concurrent use.
type Kafka struct {
	cfg kafkaConfig

	mu      sync.Mutex
	cluster *kfake.Cluster // nil while stopped
	addrs   []string       // host:port of each broker, fixed at the first start
	ports   []int
	closed  bool
}

// KafkaOption configures NewKafka and StartKafka.
type KafkaOption func(*kafkaConfig)

type kafkaConfig struct {
	brokers           int
	topics            map[string]int32
	dataDir           string
	syncWrites        bool
	autoCreateTopics  bool
	minSessionTimeout time.Duration
	tls               *tls.Config
}

// KafkaTopic creates topic with the given number of partitions (at least 1)
// when the cluster starts without data. The option can be repeated; for a
// topic named twice the last one counts.
func KafkaTopic(topic string, partitions int32) KafkaOption {
	return func(c *kafkaConfig) {
		if c.topics == nil {
			c.topics = make(map[string]int32)
		}
		c.topics[topic] = partitions
	}
}

// KafkaDataDir keeps the cluster's state in dir (created if missing) so that
// it survives Stop and Start. Close leaves dir in place: it belongs to the
// caller (in tests, use tb.TempDir()). A dir that already holds a cluster's
// state is loaded and the KafkaTopic options are ignored.
func KafkaDataDir(dir string) KafkaOption {
	return func(c *kafkaConfig) { c.dataDir = dir }
}

// KafkaSyncWrites makes the cluster fsync every produced batch (with
// KafkaDataDir). Without it, batches are written to the files at once but
// only fsynced at Stop, Close and segment rolls, like Kafka's default.
func KafkaSyncWrites() KafkaOption {
	return func(c *kafkaConfig) { c.syncWrites = true }
}

// KafkaBrokers sets the number of brokers (default 1). Each partition's
// leader is a broker chosen at random.
func KafkaBrokers(n int) KafkaOption {
	return func(c *kafkaConfig) { c.brokers = n }
}

// KafkaAutoCreateTopics lets a metadata request create a missing topic (10
// partitions), as Kafka's auto.create.topics.enable does. By default a
// topic that was not created with KafkaTopic does not exist, so a misspelt
// topic fails instead of silently creating a new one.
func KafkaAutoCreateTopics() KafkaOption {
	return func(c *kafkaConfig) { c.autoCreateTopics = true }
}

// KafkaTLS makes every broker speak TLS only, with the server side c
// (TLSFiles.ServerConfig): plaintext clients get no answer.
func KafkaTLS(c *tls.Config) KafkaOption {
	return func(cfg *kafkaConfig) { cfg.tls = c }
}

// KafkaGroupMinSessionTimeout sets the smallest consumer group session
// timeout the cluster accepts (group.min.session.timeout.ms). The default
// here is 100 ms, instead of Kafka's 6 s, so that tests can use short
// sarama Consumer.Group.Session.Timeout values and notice a dead member
// quickly.
func KafkaGroupMinSessionTimeout(d time.Duration) KafkaOption {
	return func(c *kafkaConfig) { c.minSessionTimeout = d }
}

// NewKafka starts a cluster on free ports of 127.0.0.1 (from FreePort, so a
// restart on the same ports does not collide with clients' ephemeral ports;
// it tries other ports if one was taken meanwhile) and returns once it
// accepts connections. The caller must Close it.
func NewKafka(opts ...KafkaOption) (*Kafka, error) {
	cfg := kafkaConfig{
		brokers:           1,
		minSessionTimeout: 100 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	k := &Kafka{cfg: cfg}
	if err := onFreePorts(cfg.brokers, func(p []int) error { k.ports = p; return k.start() }); err != nil {
		return nil, err
	}
	return k, nil
}

// StartKafka is NewKafka for tests: it registers Close with tb.Cleanup and
// fails the test with tb.Fatal if the cluster cannot be started.
func StartKafka(tb testing.TB, opts ...KafkaOption) *Kafka {
	tb.Helper()
	k, err := NewKafka(opts...)
	if err != nil {
		tb.Fatalf("testenv: start Kafka: %v", err)
	}
	tb.Cleanup(k.Close)
	return k
}

func (c *kafkaConfig) validate() error {
	if c.brokers < 1 {
		return fmt.Errorf("testenv: Kafka: %d brokers, want at least 1", c.brokers)
	}
	for t, p := range c.topics {
		if t == "" {
			return errors.New("testenv: Kafka: empty topic name")
		}
		if p < 1 {
			return fmt.Errorf("testenv: Kafka: topic %q has %d partitions, want at least 1", t, p)
		}
	}
	if c.minSessionTimeout <= 0 {
		return fmt.Errorf("testenv: Kafka: group min session timeout %v, want > 0", c.minSessionTimeout)
	}
	return nil
}

// Brokers returns the address of each broker, "127.0.0.1:PORT", for
// sarama.NewClient and friends. The addresses stay the same across Stop and
// Start.
func (k *Kafka) Brokers() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.addrs...)
}

// Cluster returns the running kfake cluster, for fault injection (Fault,
// Control) and partition moves, or nil while the cluster is stopped or
// closed. It is a different value after each Start.
func (k *Kafka) Cluster() *kfake.Cluster {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cluster
}

// Stop shuts the cluster down: it closes the listeners and every client
// connection and, with KafkaDataDir, writes the state to the directory.
// Clients see the brokers as down until Start. Stopping a stopped cluster
// does nothing.
func (k *Kafka) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
}

// Start starts a stopped cluster again on the same ports, with the state
// kept in the KafkaDataDir directory or, without one, empty. It is an error
// to Start a running or closed cluster, and Start fails if another process
// took one of the ports meanwhile.
func (k *Kafka) Start() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errors.New("testenv: start Kafka: cluster is closed")
	}
	if k.cluster != nil {
		return errors.New("testenv: start Kafka: cluster is already running")
	}
	return k.start()
}

// Close stops the cluster. It does not remove the KafkaDataDir directory.
// Calling it again does nothing.
func (k *Kafka) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	k.closed = true
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
}

// start starts the cluster on k.ports; k.mu must be held or k not yet
// shared.
func (k *Kafka) start() error {
	opts := []kfake.Opt{
		kfake.NumBrokers(k.cfg.brokers),
		kfake.GroupMinSessionTimeout(k.cfg.minSessionTimeout),
		kfake.Ports(k.ports...),
	}
	for t, p := range k.cfg.topics {
		opts = append(opts, kfake.SeedTopics(p, t))
	}
	if k.cfg.dataDir != "" {
		if err := os.MkdirAll(k.cfg.dataDir, 0o755); err != nil {
			return fmt.Errorf("testenv: start Kafka: %w", err)
		}
		opts = append(opts, kfake.DataDir(k.cfg.dataDir))
	}
	if k.cfg.syncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	if k.cfg.autoCreateTopics {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	if k.cfg.tls != nil {
		opts = append(opts, kfake.TLS(k.cfg.tls))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("testenv: start Kafka on 127.0.0.1 ports %v: %w", k.ports, err)
	}
	if k.addrs == nil {
		k.addrs = c.ListenAddrs()
	}
	k.cluster = c
	return nil
}
