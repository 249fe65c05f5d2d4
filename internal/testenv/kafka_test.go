package testenv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	ordersTopic = "orders"
	ordersParts = 8
	orderKeys   = 64 // distinct keys, spread over the 8 partitions
)

// saramaConfig is the configuration the flash-sale producer and consumer
// rely on: an idempotent producer (unless idempotent is false) and a
// consumer group with short timeouts that starts at the oldest offset and
// commits what was marked.
func saramaConfig(idempotent bool) *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V4_0_0_0
	cfg.ClientID = "testenv"
	cfg.Metadata.AllowAutoTopicCreation = false
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Idempotent = idempotent
	cfg.Producer.Retry.Max = 10
	cfg.Producer.Retry.Backoff = 10 * time.Millisecond
	cfg.Producer.Return.Successes = true
	cfg.Producer.Return.Errors = true
	cfg.Net.MaxOpenRequests = 1
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	cfg.Consumer.Offsets.AutoCommit.Enable = true
	cfg.Consumer.Offsets.AutoCommit.Interval = 100 * time.Millisecond
	cfg.Consumer.Group.Session.Timeout = 1500 * time.Millisecond
	cfg.Consumer.Group.Heartbeat.Interval = 300 * time.Millisecond
	cfg.Consumer.Return.Errors = true
	return cfg
}

// order is one produced message: value seq under key, as stored at
// partition/offset.
type order struct {
	key       string
	seq       int
	partition int32
	offset    int64
}

// produce sends the orders first..first+n-1 (key "goods-<seq mod
// orderKeys>", value the decimal seq) through an AsyncProducer, waits (at
// most 15 s) until each one is acknowledged or failed, and returns them as
// acknowledged. It fails the test on any produce error.
//
// It closes the producer only after every message was answered: an
// idempotent sarama producer fails the batches it is still retrying with
// ErrShuttingDown when it is closed.
func produce(t *testing.T, brokers []string, cfg *sarama.Config, first, n int) []order {
	t.Helper()
	p, err := sarama.NewAsyncProducer(brokers, cfg)
	if err != nil {
		t.Fatalf("NewAsyncProducer: %v", err)
	}
	defer p.Close()
	var (
		acked []order
		errs  []error
	)
	answer := func(m *sarama.ProducerMessage, err *sarama.ProducerError) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		seq, _ := strconv.Atoi(string(m.Value.(sarama.StringEncoder)))
		acked = append(acked, order{key: string(m.Key.(sarama.StringEncoder)), seq: seq, partition: m.Partition, offset: m.Offset})
	}
	timeout := time.After(15 * time.Second)
	for i := first; len(acked)+len(errs) < n; {
		var input chan<- *sarama.ProducerMessage
		var m *sarama.ProducerMessage
		if i < first+n {
			input = p.Input()
			m = &sarama.ProducerMessage{
				Topic: ordersTopic,
				Key:   sarama.StringEncoder(fmt.Sprintf("goods-%d", i%orderKeys)),
				Value: sarama.StringEncoder(strconv.Itoa(i)),
			}
		}
		select {
		case input <- m:
			i++
		case m := <-p.Successes():
			answer(m, nil)
		case err := <-p.Errors():
			answer(nil, err)
		case <-timeout:
			t.Fatalf("%d sent, %d acknowledged, %d failed in 15 s", i-first, len(acked), len(errs))
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d of %d messages failed; first error: %v", len(errs), n, errs[0])
	}
	return acked
}

// highWatermarks returns the next offset of every partition of the orders
// topic.
func highWatermarks(t *testing.T, brokers []string) []int64 {
	t.Helper()
	c, err := sarama.NewClient(brokers, saramaConfig(true))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer c.Close()
	hw := make([]int64, ordersParts)
	for p := range hw {
		if hw[p], err = c.GetOffset(ordersTopic, int32(p), sarama.OffsetNewest); err != nil {
			t.Fatalf("GetOffset(%s/%d): %v", ordersTopic, p, err)
		}
	}
	return hw
}

func sum(xs []int64) int64 {
	var s int64
	for _, x := range xs {
		s += x
	}
	return s
}

// readAll reads every partition of the orders topic from offset 0 to its
// high watermark with plain partition consumers (no group, no offsets).
func readAll(t *testing.T, brokers []string) []order {
	t.Helper()
	hw := highWatermarks(t, brokers)
	c, err := sarama.NewConsumer(brokers, saramaConfig(true))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	defer c.Close()
	var (
		mu   sync.Mutex
		all  []order
		errs []error
		wg   sync.WaitGroup
	)
	for p := int32(0); p < ordersParts; p++ {
		if hw[p] == 0 {
			continue
		}
		pc, err := c.ConsumePartition(ordersTopic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("ConsumePartition(%d): %v", p, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pc.Close()
			var got []order
			timeout := time.After(10 * time.Second)
			var err error
			for next := int64(0); next < hw[p] && err == nil; {
				select {
				case m := <-pc.Messages():
					seq, serr := strconv.Atoi(string(m.Value))
					if serr != nil {
						err = fmt.Errorf("partition %d offset %d: value %q", p, m.Offset, m.Value)
						break
					}
					got = append(got, order{key: string(m.Key), seq: seq, partition: m.Partition, offset: m.Offset})
					next = m.Offset + 1
				case cerr := <-pc.Errors():
					err = fmt.Errorf("partition %d: %w", p, cerr)
				case <-timeout:
					err = fmt.Errorf("partition %d: read up to offset %d of %d in 10 s", p, next, hw[p])
				}
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, got...)
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	slices.SortFunc(all, func(a, b order) int {
		return cmp.Or(cmp.Compare(a.partition, b.partition), cmp.Compare(a.offset, b.offset))
	})
	return all
}

// checkOrders checks that got holds each of the orders first..first+n-1
// exactly once, every key in a single partition, and each key's orders in
// the order they were sent.
func checkOrders(t *testing.T, got []order, first, n int) {
	t.Helper()
	seen := make(map[int]int, n)
	keyPart := make(map[string]int32)
	lastSeq := make(map[string]int)
	for _, o := range got {
		seen[o.seq]++
		if o.seq < first || o.seq >= first+n {
			t.Errorf("unexpected order %d at %d/%d", o.seq, o.partition, o.offset)
		}
		if want := fmt.Sprintf("goods-%d", o.seq%orderKeys); o.key != want {
			t.Errorf("order %d has key %q, want %q", o.seq, o.key, want)
		}
		if p, ok := keyPart[o.key]; ok && p != o.partition {
			t.Errorf("key %s in partitions %d and %d", o.key, p, o.partition)
		}
		keyPart[o.key] = o.partition
		if last, ok := lastSeq[o.key]; ok && o.seq <= last {
			t.Errorf("key %s: order %d stored after order %d", o.key, o.seq, last)
		}
		lastSeq[o.key] = o.seq
	}
	dups, missing := 0, 0
	for i := first; i < first+n; i++ {
		switch seen[i] {
		case 0:
			missing++
		case 1:
		default:
			dups += seen[i] - 1
		}
	}
	if dups > 0 || missing > 0 {
		t.Errorf("orders %d..%d: %d duplicates, %d missing (%d read)", first, first+n-1, dups, missing, len(got))
	}
}

// timeoutAfterAppend makes the broker store produced batches of the orders
// topic but answer the first count partitions with REQUEST_TIMED_OUT, as a
// real broker does when replication is slow, so the producer retries a batch
// that is already stored.
func timeoutAfterAppend(c *kfake.Cluster, count int) *kfake.FaultHandle {
	return c.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Topic: ordersTopic,
		Err:   kerr.RequestTimedOut,
		Count: count,
	})
}

// TestKafkaIdempotentProducer: 10,000 orders through an idempotent
// AsyncProducer while the broker answers some stored batches with a
// timeout. Every order is stored exactly once, in its key's partition and in
// send order. The same run without idempotence stores duplicates, which
// shows that the fault does make the producer resend stored batches.
func TestKafkaIdempotentProducer(t *testing.T) {
	t.Parallel()
	const n = 10000
	for _, idempotent := range []bool{true, false} {
		t.Run(fmt.Sprintf("idempotent=%v", idempotent), func(t *testing.T) {
			t.Parallel()
			k := StartKafka(t, KafkaTopic(ordersTopic, ordersParts))
			faults := timeoutAfterAppend(k.Cluster(), 20)
			start := time.Now()
			acked := produce(t, k.Brokers(), saramaConfig(idempotent), 0, n)
			t.Logf("%d orders acknowledged in %v; %d produce answers were timeouts", n, time.Since(start).Round(time.Millisecond), faults.Hits())
			if faults.Hits() == 0 {
				t.Fatal("the broker answered no produce with a timeout; the test proves nothing")
			}

			hw := highWatermarks(t, k.Brokers())
			for p, h := range hw {
				if h == 0 {
					t.Errorf("partition %d is empty: keys are not spread over the %d partitions", p, ordersParts)
				}
			}
			stored := readAll(t, k.Brokers())
			if !idempotent {
				if sum(hw) <= n || len(stored) <= n {
					t.Fatalf("without idempotence: %d stored (high watermarks %v), want duplicates (> %d)", len(stored), hw, n)
				}
				t.Logf("without idempotence: %d orders stored for %d sent", len(stored), n)
				return
			}
			if sum(hw) != n {
				t.Errorf("high watermarks %v sum to %d, want %d", hw, sum(hw), n)
			}
			checkOrders(t, stored, 0, n)
			// What the producer reported matches what is stored.
			at := make(map[[2]int64]int, len(stored))
			for _, o := range stored {
				at[[2]int64{int64(o.partition), o.offset}] = o.seq
			}
			wrong := 0
			for _, a := range acked {
				if seq, ok := at[[2]int64{int64(a.partition), a.offset}]; !ok || seq != a.seq {
					wrong++
				}
			}
			if wrong > 0 {
				t.Errorf("%d of %d acknowledgements name a partition/offset that does not hold their order", wrong, n)
			}
		})
	}
}

// groupHandler records the messages of its claims and marks each one after
// recording it. It signals done once want messages were recorded.
type groupHandler struct {
	want int

	mu        sync.Mutex
	got       []order
	setupAt   time.Time
	claims    map[int32]bool
	done      chan struct{}
	closeOnce sync.Once
}

var _ sarama.ConsumerGroupHandler = (*groupHandler)(nil)

func newGroupHandler(want int) *groupHandler {
	return &groupHandler{want: want, done: make(chan struct{}), claims: make(map[int32]bool)}
}

func (h *groupHandler) Setup(s sarama.ConsumerGroupSession) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.setupAt.IsZero() {
		h.setupAt = time.Now()
	}
	for _, p := range s.Claims()[ordersTopic] {
		h.claims[p] = true
	}
	return nil
}

func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *groupHandler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case m, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			seq, err := strconv.Atoi(string(m.Value))
			if err != nil {
				return fmt.Errorf("partition %d offset %d: value %q", m.Partition, m.Offset, m.Value)
			}
			h.mu.Lock()
			h.got = append(h.got, order{key: string(m.Key), seq: seq, partition: m.Partition, offset: m.Offset})
			if len(h.got) == h.want {
				h.closeOnce.Do(func() { close(h.done) })
			}
			h.mu.Unlock()
			s.MarkMessage(m, "")
		case <-s.Context().Done():
			return nil
		}
	}
}

// consumeGroup runs one member of group until h has recorded h.want
// messages (at most 15 s), then closes it, which commits the marked
// offsets. It returns how long the member took to get its first assignment.
func consumeGroup(t *testing.T, brokers []string, group string, h *groupHandler) time.Duration {
	t.Helper()
	cg, err := sarama.NewConsumerGroup(brokers, group, saramaConfig(true))
	if err != nil {
		t.Fatalf("NewConsumerGroup: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	var (
		wg       sync.WaitGroup
		groupErr []error
		errMu    sync.Mutex
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if err := cg.Consume(ctx, []string{ordersTopic}, h); err != nil && !errors.Is(err, sarama.ErrClosedConsumerGroup) {
				errMu.Lock()
				groupErr = append(groupErr, err)
				errMu.Unlock()
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for err := range cg.Errors() {
			errMu.Lock()
			groupErr = append(groupErr, err)
			errMu.Unlock()
		}
	}()
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		h.mu.Lock()
		t.Errorf("group %s: %d of %d messages in 15 s", group, len(h.got), h.want)
		h.mu.Unlock()
	}
	cancel()
	if err := cg.Close(); err != nil {
		t.Errorf("close group %s: %v", group, err)
	}
	wg.Wait()
	for _, err := range groupErr {
		t.Errorf("group %s: %v", group, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.setupAt.IsZero() {
		return 0
	}
	return h.setupAt.Sub(start)
}

// committedOffsets returns the offsets group committed for the orders
// topic, -1 for none.
func committedOffsets(t *testing.T, brokers []string, group string) []int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, saramaConfig(true))
	if err != nil {
		t.Fatalf("NewClusterAdmin: %v", err)
	}
	defer admin.Close()
	parts := make([]int32, ordersParts)
	for i := range parts {
		parts[i] = int32(i)
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{ordersTopic: parts})
	if err != nil {
		t.Fatalf("ListConsumerGroupOffsets(%s): %v", group, err)
	}
	offs := make([]int64, ordersParts)
	for i := range offs {
		b := resp.GetBlock(ordersTopic, int32(i))
		switch {
		case b == nil:
			t.Fatalf("group %s: no committed offset block for partition %d", group, i)
		case b.Err != sarama.ErrNoError:
			t.Fatalf("group %s partition %d: %v", group, i, b.Err)
		}
		offs[i] = b.Offset
	}
	return offs
}

// TestKafkaDataDirRestart: with KafkaDataDir, orders and committed group
// offsets survive Stop and Start on the same port, and offsets continue
// where they were; without it, a restart starts empty.
func TestKafkaDataDirRestart(t *testing.T) {
	t.Parallel()
	const n, group = 2000, "flash-sale"
	k := StartKafka(t, KafkaTopic(ordersTopic, ordersParts), KafkaDataDir(t.TempDir()))
	brokers := k.Brokers()
	produce(t, brokers, saramaConfig(true), 0, n)
	consumeGroup(t, brokers, group, newGroupHandler(n))
	before := readAll(t, brokers)
	hw := highWatermarks(t, brokers)
	committed := committedOffsets(t, brokers, group)
	if fmt.Sprint(committed) != fmt.Sprint(hw) {
		t.Fatalf("committed offsets %v, want the high watermarks %v", committed, hw)
	}

	// A producer that outlives the restart.
	sp, err := sarama.NewSyncProducer(brokers, saramaConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()

	start := time.Now()
	k.Stop()
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop+Start with %d orders in %v", n, time.Since(start).Round(time.Millisecond))
	if got := k.Brokers(); fmt.Sprint(got) != fmt.Sprint(brokers) {
		t.Fatalf("brokers %v after restart, want %v", got, brokers)
	}

	after := readAll(t, brokers)
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("after restart: %d orders, want the same %d as before", len(after), len(before))
	}
	checkOrders(t, after, 0, n)
	if got := highWatermarks(t, brokers); fmt.Sprint(got) != fmt.Sprint(hw) {
		t.Errorf("high watermarks %v after restart, want %v", got, hw)
	}
	if got := committedOffsets(t, brokers, group); fmt.Sprint(got) != fmt.Sprint(committed) {
		t.Errorf("committed offsets %v after restart, want %v", got, committed)
	}

	// The old producer reconnects, and new orders go after the old ones.
	p, off, err := sp.SendMessage(&sarama.ProducerMessage{Topic: ordersTopic, Key: sarama.StringEncoder("goods-0"), Value: sarama.StringEncoder(strconv.Itoa(n))})
	if err != nil {
		t.Fatalf("produce after restart with a producer from before: %v", err)
	}
	if off != hw[p] {
		t.Errorf("order produced after restart at %d/%d, want offset %d", p, off, hw[p])
	}
	h := newGroupHandler(1)
	consumeGroup(t, brokers, group, h)
	if len(h.got) != 1 || h.got[0].seq != n {
		t.Errorf("group read %d orders after restart (first %v), want only order %d", len(h.got), h.got[0], n)
	}

	// Without a data directory, nothing survives.
	mem := StartKafka(t, KafkaTopic(ordersTopic, ordersParts))
	produce(t, mem.Brokers(), saramaConfig(true), 0, 10)
	mem.Stop()
	if err := mem.Start(); err != nil {
		t.Fatal(err)
	}
	if got := sum(highWatermarks(t, mem.Brokers())); got != 0 {
		t.Errorf("without KafkaDataDir: %d orders after restart, want 0", got)
	}
}

// TestKafkaLifecycle checks the Kafka methods' contracts.
func TestKafkaLifecycle(t *testing.T) {
	t.Parallel()
	k := StartKafka(t, KafkaBrokers(3), KafkaTopic("a", 3), KafkaTopic("b", 1))
	if got := len(k.Brokers()); got != 3 {
		t.Fatalf("%d brokers, want 3", got)
	}
	c, err := sarama.NewClient(k.Brokers(), saramaConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	topics, err := c.Topics()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(topics)
	if fmt.Sprint(topics) != "[a b]" {
		t.Errorf("topics %v, want [a b]", topics)
	}
	if err := k.Start(); err == nil {
		t.Error("Start of a running cluster succeeded")
	}
	k.Stop()
	k.Stop()
	if k.Cluster() != nil {
		t.Error("Cluster() is not nil after Stop")
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	k.Close()
	k.Close()
	if err := k.Start(); err == nil {
		t.Error("Start of a closed cluster succeeded")
	}

	for _, opts := range [][]KafkaOption{
		{KafkaBrokers(0)},
		{KafkaTopic("t", 0)},
		{KafkaTopic("", 1)},
		{KafkaGroupMinSessionTimeout(0)},
	} {
		if k, err := NewKafka(opts...); err == nil {
			k.Close()
			t.Errorf("NewKafka with a bad option succeeded")
		}
	}
}
