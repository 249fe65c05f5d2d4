package seckill

import (
	"errors"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
)

// ErrKafka wraps what CheckKafka found that no retry cures: a refused
// login, a missing topic, a topic the user may not use.
var ErrKafka = errors.New("kafka")

// CheckKafka connects as the sale would and describes its topics (the
// orders topic and the dead-letter topic): it returns, wrapping ErrKafka,
// a refused SASL login, and every topic that does not exist or that the
// user may not describe, naming the brokers and the user. Other errors
// (brokers unreachable) are returned as they are: a retry may cure them.
func CheckKafka(k Kafka) error {
	c, err := saramaConfig(k, "cachesync-check")
	if err != nil {
		return err
	}
	who := fmt.Sprintf("kafka %s", strings.Join(k.Brokers, ","))
	if k.Username != "" {
		who += fmt.Sprintf(" as %q", k.Username)
	}
	failed := func(what string, err error) error {
		if refusedLogin(err) {
			return fmt.Errorf("%w: %s: login refused (%s): %w", ErrKafka, who, k.Mechanism, err)
		}
		return fmt.Errorf("%s: %s%w", who, what, err)
	}
	admin, err := sarama.NewClusterAdmin(k.Brokers, c)
	if err != nil {
		return failed("", err)
	}
	defer admin.Close()
	meta, err := admin.DescribeTopics([]string{k.Topic, k.DeadLetterTopic})
	if err != nil {
		return failed("describe topics: ", err)
	}
	var problems []string
	for _, t := range meta {
		switch {
		case errors.Is(t.Err, sarama.ErrUnknownTopicOrPartition):
			problems = append(problems, fmt.Sprintf("topic %q does not exist: create it (the orders topic's partitions bound the consumers)", t.Name))
		case errors.Is(t.Err, sarama.ErrTopicAuthorizationFailed):
			problems = append(problems, fmt.Sprintf("topic %q: not authorized (ACL: DESCRIBE, READ and WRITE on the topic, READ on group %q)", t.Name, k.Group))
		case t.Err != sarama.ErrNoError:
			problems = append(problems, fmt.Sprintf("topic %q: %v", t.Name, t.Err))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s:\n  - %s", ErrKafka, who, strings.Join(problems, "\n  - "))
	}
	return nil
}

// refusedLogin reports whether err is the broker refusing the SASL
// handshake or the credentials.
func refusedLogin(err error) bool {
	return errors.Is(err, sarama.ErrSASLAuthenticationFailed) || errors.Is(err, sarama.ErrUnsupportedSASLMechanism) ||
		errors.Is(err, sarama.ErrIllegalSASLState)
}
