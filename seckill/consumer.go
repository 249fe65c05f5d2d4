package seckill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"
)

// Consumer stores the orders of the Kafka topic in MySQL with a sarama
// consumer group. A message is marked only after its transaction
// committed (or after it was dead-lettered), so a crash redelivers it and
// the redelivery is a no-op (the order id is the primary key).
type Consumer struct {
	cfg    Config
	store  *Store
	client sarama.Client // the group's; closed after it
	group  sarama.ConsumerGroup
	dlq    sarama.SyncProducer
	m      *metrics
	log    zerolog.Logger

	health consumerHealth
}

// NewConsumer joins the consumer group (it consumes once Run is called).
func NewConsumer(cfg Config, store *Store, m *metrics, log zerolog.Logger) (*Consumer, error) {
	c, err := saramaConfig(cfg.Kafka, "cachesync-consumer")
	if err != nil {
		return nil, err
	}
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = 200 * time.Millisecond
	c.Consumer.Group.Session.Timeout = cfg.Kafka.SessionTimeout
	c.Consumer.Group.Heartbeat.Interval = cfg.Kafka.SessionTimeout / 5
	c.Consumer.Group.Rebalance.Timeout = 2 * cfg.Kafka.SessionTimeout
	c.Consumer.Return.Errors = true
	// A static member: restarted after a crash, it takes its place back
	// without waiting out its dead session (see Kafka.InstanceID).
	c.Consumer.Group.InstanceId = cfg.Kafka.InstanceID
	// Our own client: it outlives the group's Close, for the leave.
	client, err := sarama.NewClient(cfg.Kafka.Brokers, c)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer group %s at %v: %w", cfg.Kafka.Group, cfg.Kafka.Brokers, err)
	}
	group, err := sarama.NewConsumerGroupFromClient(cfg.Kafka.Group, client)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("kafka consumer group %s at %v: %w", cfg.Kafka.Group, cfg.Kafka.Brokers, err)
	}
	pc, err := saramaConfig(cfg.Kafka, "cachesync-dlq")
	if err != nil {
		return nil, err
	}
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Producer.Idempotent = true
	pc.Net.MaxOpenRequests = 1
	pc.Producer.Return.Successes = true
	dlq, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, pc)
	if err != nil {
		group.Close()
		client.Close()
		return nil, fmt.Errorf("kafka dead-letter producer %v: %w", cfg.Kafka.Brokers, err)
	}
	return &Consumer{cfg: cfg, store: store, client: client, group: group, dlq: dlq, m: m, log: log}, nil
}

// Run consumes until ctx is done or the group is closed, rejoining at once
// after a rebalance and, after an error, with back-off (from about 1 s to
// 10 s, starting over after a rebalance). It returns errFenced, and
// consumes no more, when another process joined with its instance id.
func (c *Consumer) Run(ctx context.Context) error {
	go func() {
		for err := range c.group.Errors() {
			if errors.Is(err, sarama.ErrFencedInstancedId) {
				c.health.fence()
			}
			c.log.Warn().Err(err).Msg("consumer group")
		}
	}()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = time.Second, 10*time.Second
	for ctx.Err() == nil {
		// One session: Consume returns nil at a rebalance.
		_, err := backoff.Retry(ctx, func() (struct{}, error) {
			err := c.group.Consume(ctx, []string{c.cfg.Kafka.Topic}, c)
			switch {
			case errors.Is(err, sarama.ErrClosedConsumerGroup):
				return struct{}{}, backoff.Permanent(err)
			case errors.Is(err, sarama.ErrFencedInstancedId) || c.health.isFenced():
				c.health.fence()
				return struct{}{}, backoff.Permanent(errFenced)
			case err != nil && ctx.Err() == nil:
				c.health.joinFailed(err)
			}
			return struct{}{}, err
		}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, wait time.Duration) {
			c.log.Warn().Err(err).Dur("retry_in", wait).Msg("consume; rejoining")
		}))
		switch {
		case errors.Is(err, sarama.ErrClosedConsumerGroup):
			return nil
		case errors.Is(err, errFenced):
			c.log.Error().Str("instance_id", c.cfg.Kafka.InstanceID).Str("group", c.cfg.Kafka.Group).
				Msg("consumer fenced: another process joined the group with this instance id; this one stopped consuming (set a unique seckill.kafka.instance_id)")
			return err
		}
	}
	return nil
}

// Check is the consumer's readiness (/readyz "consumer"): see
// consumerHealth.check; a rebalance may last up to the session timeout.
func (c *Consumer) Check(context.Context) error {
	return c.health.check(time.Now(), c.cfg.Kafka.SessionTimeout)
}

// Close leaves the group and closes the dead-letter producer. A static
// member leaves explicitly (sarama's Close keeps it in the group, KIP-345):
// a graceful stop hands its partitions over at once, as before, instead
// of holding them for a session timeout in case it comes back; a crash
// leaves nothing, so its restart takes the place back. A fenced member
// does not leave: the place is another process's now.
func (c *Consumer) Close() error {
	err := c.group.Close()
	if c.cfg.Kafka.InstanceID != "" && !c.health.isFenced() {
		err = errors.Join(err, c.leave())
	}
	return errors.Join(err, c.client.Close(), c.dlq.Close())
}

// leave sends LeaveGroup for this static member with the member id of its
// last session: a coordinator that has handed the instance id to another
// process since answers FENCED_INSTANCE_ID instead of removing that one
// (Kafka checks the pair; kfake does not).
func (c *Consumer) leave() error {
	k := c.cfg.Kafka
	member := c.health.memberID()
	if member == "" {
		return nil // never had a session: nothing to leave
	}
	coord, err := c.client.Coordinator(k.Group)
	if err != nil {
		return fmt.Errorf("leave group %s as %s: %w", k.Group, k.InstanceID, err)
	}
	resp, err := coord.LeaveGroup(&sarama.LeaveGroupRequest{Version: 3, GroupId: k.Group,
		Members: []sarama.MemberIdentity{{MemberId: member, GroupInstanceId: &k.InstanceID}}})
	if err == nil {
		err = leaveErr(resp)
	}
	if err != nil {
		return fmt.Errorf("leave group %s as %s: %w", k.Group, k.InstanceID, err)
	}
	return nil
}

// leaveErr is the error of a LeaveGroup answer; an unknown member (its
// session expired meanwhile) has left already.
func leaveErr(resp *sarama.LeaveGroupResponse) error {
	if resp.Err != sarama.ErrNoError {
		return resp.Err
	}
	for _, m := range resp.Members {
		if m.Err != sarama.ErrNoError && m.Err != sarama.ErrUnknownMemberId {
			return m.Err
		}
	}
	return nil
}

// Setup implements sarama.ConsumerGroupHandler.
func (c *Consumer) Setup(s sarama.ConsumerGroupSession) error {
	c.health.started(s.MemberID())
	return nil
}

// Cleanup implements sarama.ConsumerGroupHandler. A session the
// coordinator ended because another process joined with our instance id
// has that as its cause.
func (c *Consumer) Cleanup(s sarama.ConsumerGroupSession) error {
	if errors.Is(context.Cause(s.Context()), sarama.ErrFencedInstancedId) {
		c.health.fence()
	}
	c.health.ended(time.Now())
	return nil
}

// ConsumeClaim stores each message, then marks it. It returns when the
// claim ends (rebalance) or the session's context is done; a message not
// yet stored then is left unmarked and redelivered to the next owner.
func (c *Consumer) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case <-s.Context().Done():
			return nil
		case msg, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			err := c.handle(s.Context(), msg)
			if s.Context().Err() == nil {
				c.health.stored(err)
			}
			if err != nil {
				return err // not marked: redelivered
			}
			s.MarkMessage(msg, "")
		}
	}
}

// handle stores one message, retrying transient failures; after the last
// attempt (or at once for a message that can never be stored) it goes to
// the dead-letter topic and the failure table. An error means neither
// worked and the message must not be marked.
func (c *Consumer) handle(ctx context.Context, msg *sarama.ConsumerMessage) error {
	start := time.Now()
	m, err := decode(msg.Value)
	if err != nil {
		return c.deadLetter(ctx, msg, m, 0, err)
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = c.cfg.Retry.Initial, c.cfg.Retry.Max
	attempts := 0
	out, err := backoff.Retry(ctx, func() (Outcome, error) {
		attempts++
		out, err := c.store.PlaceOrder(ctx, m.order())
		if ctx.Err() != nil {
			return out, backoff.Permanent(ctx.Err()) // shutting down: redelivered later
		}
		if err != nil && !transient(err) {
			return out, backoff.Permanent(err)
		}
		return out, err
	}, backoff.WithBackOff(bo), backoff.WithMaxTries(uint(c.cfg.Retry.Attempts)), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) { // not after the last attempt: given up on below
			c.m.retries.Inc()
			c.log.Warn().Err(err).Str("order", m.Order).Int("attempt", attempts).Dur("retry_in", wait).Msg("store order; retrying")
		}))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return c.deadLetter(ctx, msg, m, attempts, err)
	}
	c.m.consumed.WithLabelValues(outcomeName[out]).Inc()
	c.m.storeSeconds.Observe(time.Since(start).Seconds())
	return nil
}

var outcomeName = map[Outcome]string{Stored: "created", SoldOut: "failed", Duplicate: "duplicate"}

func (c *Consumer) deadLetter(ctx context.Context, msg *sarama.ConsumerMessage, m message, attempts int, cause error) error {
	c.m.deadLettered.Inc()
	c.log.Error().Err(cause).Str("order", m.Order).Int64("item", m.Item).Int64("user", m.User).
		Int32("partition", msg.Partition).Int64("offset", msg.Offset).Int("attempts", attempts).
		Msg("order given up on: sent to the dead-letter topic and the failure table")
	_, _, err := c.dlq.SendMessage(&sarama.ProducerMessage{
		Topic: c.cfg.Kafka.DeadLetterTopic,
		Key:   sarama.ByteEncoder(msg.Key),
		Value: sarama.ByteEncoder(msg.Value),
		Headers: []sarama.RecordHeader{
			{Key: []byte("error"), Value: []byte(cause.Error())},
			{Key: []byte("attempts"), Value: []byte(strconv.Itoa(attempts))},
			{Key: []byte("source"), Value: []byte(fmt.Sprintf("%s/%d/%d", msg.Topic, msg.Partition, msg.Offset))},
		},
	})
	if err != nil {
		return fmt.Errorf("dead-letter order %s: %w", m.Order, err)
	}
	// The failure row is best effort: MySQL may be the reason we are here;
	// the dead-letter topic already holds the message.
	if ferr := c.store.RecordFailure(ctx, m.order(), attempts, cause.Error(), msg.Value); ferr != nil {
		c.log.Error().Err(ferr).Str("order", m.Order).Msg("failure table row not written (the message is on the dead-letter topic)")
	}
	return nil
}
