package seckill_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/internal/testenv"
)

// The suite runs on a private Redis per test, or with
// CACHESYNC_TEST_REDIS_MODE=cluster on one Redis Cluster that every test
// shares, flushed by newStack (see testenv.ClusterMode): the tests run one
// at a time.
var redisCluster *testenv.RedisCluster

func TestMain(m *testing.M) {
	if testenv.ClusterMode() {
		c, err := testenv.NewRedisCluster()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		redisCluster = c
	}
	code := m.Run()
	if redisCluster != nil {
		redisCluster.Close()
	}
	testenv.RemoveBuilds() // the cachesync binary of the child daemons
	os.Exit(code)
}

// childTermWithin is how long a graceful stop of a child daemon may take.
const childTermWithin = 30 * time.Second

// saleChild is a cachesync daemon running as a child process of the test
// (`cachesync run -config FILE`) on the stack's servers; each start is a
// numbered run logging to its own file. Logs are kept when the test fails.
type saleChild struct {
	*testenv.Child
	base  string // its public listener, http://127.0.0.1:PORT
	admin string // its admin listener, http://127.0.0.1:PORT
}

// newSaleChild writes the configuration of a child daemon: the stack's
// configuration (its own mysql.server_id and HTTP ports) with seckillExtra
// under seckill. Nothing runs until Start.
func (s *stack) newSaleChild(bin, seckillExtra string) *saleChild {
	s.t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		s.t.Fatal(err)
	}
	adminPort, err := testenv.FreePort()
	if err != nil {
		s.t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cachesync-sale-child-")
	if err != nil {
		s.t.Fatal(err)
	}
	c := &saleChild{
		Child: &testenv.Child{Bin: bin, Config: filepath.Join(dir, "cachesync.yaml"), Dir: dir},
		base:  fmt.Sprintf("http://127.0.0.1:%d", port),
		admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort),
	}
	yaml := strings.Replace(s.configYAML(port, adminPort, seckillExtra), "level: warn", "level: info", 1)
	if err := os.WriteFile(c.Config, []byte(yaml), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		c.KillCurrent()
		if s.t.Failed() {
			s.t.Logf("child daemon config and logs kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return c
}

// waitStarted waits until the run has started (its seckill roles logged
// "seckill started" and its admin listener answers), then a moment longer:
// the daemon handles SIGTERM only once its start-up has returned.
func (c *saleChild) waitStarted(t *testing.T, r *testenv.ChildRun) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r.LogHas(`"seckill started"`) {
			if _, err := scrapeMetrics(c.admin); err == nil {
				break
			}
		}
		if r.Exited() || time.Now().After(deadline) {
			t.Fatalf("child run %d did not start (exited: %v)%s", r.N, r.Exited(), r.Tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
}

// scrapeMetrics reads every sample of a /metrics page.
func scrapeMetrics(base string) (map[string]float64, error) {
	r, err := call("GET", base+"/metrics", "")
	if err != nil {
		return nil, err
	}
	if r.Status != 200 {
		return nil, fmt.Errorf("GET /metrics: %d", r.Status)
	}
	return testenv.ParseMetrics(strings.NewReader(r.Raw))
}

// saramaTestConfig is a client configuration for the in-process broker.
func saramaTestConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "seckill-test"
	c.Version = sarama.V3_6_0_0
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewHashPartitioner // as the daemon's producer
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	return c
}

// produceRaw writes value to the order topic with key (the item id, as the
// daemon keys its orders, so both land in the same partition) and returns
// the partition and offset.
func (s *stack) produceRaw(key, value string) (int32, int64) {
	s.t.Helper()
	p, err := sarama.NewSyncProducer(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer p.Close()
	part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: "cachesync.orders", Key: sarama.StringEncoder(key), Value: sarama.StringEncoder(value)})
	if err != nil {
		s.t.Fatalf("produce %q: %v", value, err)
	}
	return part, off
}

// committedOffset is the order group's committed offset of a partition of
// the order topic (-1 when none).
func (s *stack) committedOffset(partition int32) int64 {
	s.t.Helper()
	admin, err := sarama.NewClusterAdmin(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets("cachesync-orders", map[string][]int32{"cachesync.orders": {partition}})
	if err != nil {
		s.t.Fatal(err)
	}
	if b := resp.GetBlock("cachesync.orders", partition); b != nil && b.Err == sarama.ErrNoError {
		return b.Offset
	}
	return -1
}

// readTopic reads every message of partition 0 of topic, waiting up to
// timeout until at least want arrived.
func (s *stack) readTopic(topic string, want int, timeout time.Duration) []*sarama.ConsumerMessage {
	s.t.Helper()
	cons, err := sarama.NewConsumer(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		s.t.Fatal(err)
	}
	defer pc.Close()
	var got []*sarama.ConsumerMessage
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for len(got) < want {
		select {
		case m := <-pc.Messages():
			got = append(got, m)
		case err := <-pc.Errors():
			s.t.Fatalf("read %s: %v", topic, err)
		case <-ctx.Done():
			s.t.Fatalf("read %s: %d messages after %s, want %d", topic, len(got), timeout, want)
		}
	}
	// Anything beyond want that is already there.
	for {
		select {
		case m := <-pc.Messages():
			got = append(got, m)
		case <-time.After(300 * time.Millisecond):
			return got
		}
	}
}

var errNoHeader = errors.New("no such header")

// header returns the value of a record header.
func header(m *sarama.ConsumerMessage, key string) (string, error) {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value), nil
		}
	}
	return "", errNoHeader
}

// Why a test runs in the standalone pass only: what it checks does not
// depend on the kind of Redis, and the cluster pass (make test runs the
// suite twice) is the longest part of CI.
const (
	whyHTTP  = "the HTTP surface (authentication, input, answers) is the same on either Redis; the sale's scripts on a cluster are covered by TestConcurrentSale and the outbox, rebuild and drift tests"
	whyMySQL = "checks MySQL grants only"
	whyKafka = "the consumer's group membership and Kafka health do not involve Redis; orders reaching Redis by CDC on a cluster are covered by TestConcurrentSale and TestDeadLetter"
)

// standaloneOnly skips t in the cluster pass, saying why.
func standaloneOnly(t *testing.T, why string) {
	t.Helper()
	if testenv.ClusterMode() {
		t.Skip("standalone pass only: " + why)
	}
}
