package seckill

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/sony/gobreaker/v2"
	"github.com/xdg-go/scram"
)

// saramaConfig is the client configuration shared by producer, consumer
// and admin. The error is seckill.kafka.tls's files failing to load.
func saramaConfig(k Kafka, clientID string) (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.ClientID = clientID
	c.Version = sarama.V3_6_0_0
	c.Net.DialTimeout = 3 * time.Second
	c.Metadata.Retry.Max = 3
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	if k.Username != "" {
		c.Net.SASL.Enable = true
		c.Net.SASL.User, c.Net.SASL.Password = k.Username, k.Password
		switch k.Mechanism {
		case "PLAIN":
			c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
		case "SCRAM-SHA-512":
			c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
			c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha512.New} }
		default:
			c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
			c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha256.New} }
		}
	}
	// sarama fills in each broker's host as the server's name unless
	// seckill.kafka.tls.server_name is set.
	tc, err := k.TLS.Client("")
	if err != nil {
		return nil, fmt.Errorf("seckill.kafka.tls: %w", err)
	}
	c.Net.TLS.Enable, c.Net.TLS.Config = tc != nil, tc
	return c, nil
}

type scramClient struct {
	hash func() hash.Hash
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := scram.HashGeneratorFcn(s.hash).NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }
func (s *scramClient) Done() bool                            { return s.conv.Done() }

// Producer sends orders with an idempotent, acks=all AsyncProducer and
// reports each message's own result, so concurrent requests share
// batches instead of paying a round trip each.
type Producer struct {
	ap      sarama.AsyncProducer
	topic   string
	timeout time.Duration
	done    chan struct{}
	// cb opens after breakerTrip failed sends in a row: while open, Send
	// and Available answer ErrKafkaDown at once, instead of every request
	// reserving a unit and waiting out the timeout; after breakerOpen one
	// send probes Kafka again.
	cb *gobreaker.CircuitBreaker[struct{}]
}

// The producer's circuit breaker: opened by breakerTrip failures in a
// row, for breakerOpen before a send probes again.
const (
	breakerTrip = 3
	breakerOpen = 2 * time.Second
)

// ErrKafkaDown: the last sends all failed; reservations are refused (503)
// without touching Redis until a probe succeeds.
var ErrKafkaDown = errors.New("kafka is failing: orders are not accepted for now")

type pending struct{ ch chan error }

// NewProducer connects to the brokers.
func NewProducer(k Kafka, timeout time.Duration) (*Producer, error) {
	c, err := saramaConfig(k, "cachesync-producer")
	if err != nil {
		return nil, err
	}
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 5
	c.Producer.Retry.Backoff = 50 * time.Millisecond
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Timeout = timeout
	// No flush timer: a batch goes out as soon as the previous request is
	// answered (one in flight), so concurrent orders share batches without
	// waiting for a timer.
	c.Producer.Partitioner = sarama.NewHashPartitioner
	ap, err := sarama.NewAsyncProducer(k.Brokers, c)
	if err != nil {
		return nil, fmt.Errorf("kafka producer %v: %w", k.Brokers, err)
	}
	p := &Producer{ap: ap, topic: k.Topic, timeout: timeout, done: make(chan struct{})}
	p.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "kafka-producer",
		MaxRequests: 1,
		Timeout:     breakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= breakerTrip },
		// A client that went away says nothing about Kafka.
		IsSuccessful: func(err error) bool { return err == nil || errors.Is(err, context.Canceled) },
	})
	go p.results()
	return p, nil
}

func (p *Producer) results() {
	defer close(p.done)
	succ, errs := p.ap.Successes(), p.ap.Errors()
	for succ != nil || errs != nil {
		select {
		case m, ok := <-succ:
			if !ok {
				succ = nil
				continue
			}
			m.Metadata.(pending).ch <- nil
		case e, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			e.Msg.Metadata.(pending).ch <- e.Err
		}
	}
}

// ErrProduceTimeout: Kafka did not acknowledge in time. The message may
// still be written later.
var ErrProduceTimeout = errors.New("kafka did not acknowledge the order in time")

// errNotSent wraps a Send failure that came before the message was handed
// to the producer: nothing can have been written.
var errNotSent = errors.New("order not handed to the kafka producer")

// notSent reports whether a Send error proves the message was never
// written (see errNotSent; ErrKafkaDown is the breaker refusing before
// sending). Any other error leaves the outcome unknown: sarama may have
// written an attempt whose answer was lost, and a timed-out message may
// still be written later.
func notSent(err error) bool {
	return errors.Is(err, errNotSent) || errors.Is(err, ErrKafkaDown)
}

// Send produces m and waits for its acknowledgement; ErrKafkaDown while
// the breaker is open.
func (p *Producer) Send(ctx context.Context, m message, body []byte) error {
	_, err := p.cb.Execute(func() (struct{}, error) { return struct{}{}, p.send(ctx, m, body) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return ErrKafkaDown
	}
	return err
}

// Available is ErrKafkaDown while the breaker is open (the last sends
// failed), else nil: a reservation checks it before reserving, and
// /readyz reports it.
func (p *Producer) Available() error {
	if p.cb.State() == gobreaker.StateOpen {
		return ErrKafkaDown
	}
	return nil
}

func (p *Producer) send(ctx context.Context, m message, body []byte) error {
	ch := make(chan error, 1)
	msg := &sarama.ProducerMessage{
		Topic:    p.topic,
		Key:      sarama.StringEncoder(strconv.FormatInt(m.Item, 10)),
		Value:    sarama.ByteEncoder(body),
		Metadata: pending{ch},
	}
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case p.ap.Input() <- msg:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errNotSent, ctx.Err())
	case <-t.C:
		return fmt.Errorf("%w: %w", errNotSent, ErrProduceTimeout)
	}
	select {
	case err := <-ch:
		return err
	case <-t.C:
		return ErrProduceTimeout
	}
}

// Close flushes and stops the producer.
func (p *Producer) Close() error {
	err := p.ap.Close()
	<-p.done
	return err
}

// partitionOf returns the partition the producer sends item's orders to.
func partitionOf(topic string, item int64, partitions int32) (int32, error) {
	return sarama.NewHashPartitioner(topic).Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(strconv.FormatInt(item, 10))}, partitions)
}
