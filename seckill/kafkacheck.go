package seckill

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/IBM/sarama"
)

// ErrKafka wraps what CheckKafka found that no retry cures: a refused
// login, a missing topic, an ACL the user lacks.
var ErrKafka = errors.New("kafka")

// kafkaGrant is one ACL a role of the sale needs: an operation on a topic
// or on the consumer group.
type kafkaGrant struct {
	kind string // "topic" or "group", as kafka-acls names them
	name string
	op   sarama.AclOperation
	why  string
}

// kafkaGrants lists the ACLs cfg's roles need. The idempotent producers'
// InitProducerId needs IDEMPOTENT_WRITE on the cluster or, since Kafka 2.8
// (KIP-679), WRITE on any topic, which the api and consumer roles need
// anyway; so IDEMPOTENT_WRITE is not required. DESCRIBE, which the jobs
// role needs, is implied by READ and WRITE and is only listed for a
// resource nothing else is needed on.
func kafkaGrants(cfg *Config) []kafkaGrant {
	k := cfg.Kafka
	var gs []kafkaGrant
	if cfg.has(RoleAPI) {
		gs = append(gs, kafkaGrant{"topic", k.Topic, sarama.AclOperationWrite, "the api role produces the orders"})
	}
	if cfg.has(RoleConsumer) {
		gs = append(gs,
			kafkaGrant{"topic", k.Topic, sarama.AclOperationRead, "the consumer role consumes the orders"},
			kafkaGrant{"group", k.Group, sarama.AclOperationRead, "the consumer role joins the group and commits its offsets"},
			kafkaGrant{"topic", k.DeadLetterTopic, sarama.AclOperationWrite, "the consumer role dead-letters the orders it cannot store"})
	}
	if cfg.has(RoleJobs) {
		for _, g := range []kafkaGrant{
			{"topic", k.Topic, sarama.AclOperationDescribe, "the jobs role reads the orders' end offsets"},
			{"group", k.Group, sarama.AclOperationDescribe, "the jobs role reads the group's committed offsets"},
		} {
			if !slices.ContainsFunc(gs, func(o kafkaGrant) bool { return o.kind == g.kind && o.name == g.name }) {
				gs = append(gs, g)
			}
		}
	}
	return gs
}

// unknownOps is the authorized-operations value of a broker that did not
// report them (KIP-430: Kafka before 2.3, or not asked).
const unknownOps = math.MinInt32

// CheckKafka connects as the sale of cfg would and asks the brokers which
// operations the user may perform (KIP-430 authorized operations: a
// Metadata request for the topics, DescribeGroups for the group) on the
// topics and the group that cfg's roles use: WRITE on the orders topic
// (api), READ on it, READ on the group and WRITE on the dead-letter topic
// (consumer), DESCRIBE on the orders topic and the group (jobs). It
// returns, wrapping ErrKafka, a refused SASL login, every topic that does
// not exist and every missing ACL with the kafka-acls command that grants
// it, naming the brokers and the user. Other errors (brokers unreachable)
// are returned as they are: a retry may cure them. A broker that does not
// report authorized operations (before Kafka 2.3) is checked only for the
// topics being there and described.
func CheckKafka(cfg *Config) error {
	k := cfg.Kafka
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
	client, err := sarama.NewClient(k.Brokers, c)
	if err != nil {
		return failed("", err)
	}
	defer client.Close()
	grants := kafkaGrants(cfg)
	var topics []string
	for _, g := range grants {
		if g.kind == "topic" && !slices.Contains(topics, g.name) {
			topics = append(topics, g.name)
		}
	}
	var problems []string
	topicOps, err := describeTopics(client, c.Version, topics, &problems)
	if err != nil {
		return failed("describe topics: ", err)
	}
	groupOps := int32(unknownOps)
	if slices.ContainsFunc(grants, func(g kafkaGrant) bool { return g.kind == "group" }) {
		if groupOps, err = describeGroup(client, k.Group); err != nil {
			return failed(fmt.Sprintf("describe group %q: ", k.Group), err)
		}
	}
	p := principal(k)
	for _, g := range grants {
		ops, ok := groupOps, true
		if g.kind == "topic" {
			ops, ok = topicOps[g.name]
		}
		if !ok || ops == unknownOps || ops&(1<<g.op) != 0 {
			continue
		}
		problems = append(problems, fmt.Sprintf("%s %q: %s not allowed for %s (%s; grant: kafka-acls --add --allow-principal %s --operation %s --%s %s)",
			g.kind, g.name, strings.ToUpper(g.op.String()), p, g.why, p, g.op.String(), g.kind, g.name))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s:\n  - %s", ErrKafka, who, strings.Join(problems, "\n  - "))
	}
	return nil
}

// describeTopics returns the operations the user may perform on each
// described topic: none on one it may not describe, unknownOps where the
// broker did not say. A topic that does not exist is not in the map; it
// and other topic errors are added to problems.
func describeTopics(client sarama.Client, v sarama.KafkaVersion, topics []string, problems *[]string) (map[string]int32, error) {
	b, err := client.Controller() // any broker; the one ClusterAdmin asks
	if err != nil {
		return nil, err
	}
	req := sarama.NewMetadataRequest(v, topics)
	req.IncludeTopicAuthorizedOperations = true
	meta, err := b.GetMetadata(req)
	if err != nil {
		return nil, err
	}
	ops := make(map[string]int32, len(topics))
	for _, t := range meta.Topics {
		switch {
		case errors.Is(t.Err, sarama.ErrNoError):
			ops[t.Name] = t.TopicAuthorizedOperations
			if meta.Version < 8 {
				ops[t.Name] = unknownOps
			}
		case errors.Is(t.Err, sarama.ErrTopicAuthorizationFailed):
			ops[t.Name] = 0 // not even DESCRIBE, so neither READ nor WRITE
		case errors.Is(t.Err, sarama.ErrUnknownTopicOrPartition):
			*problems = append(*problems, fmt.Sprintf("topic %q does not exist: create it (the orders topic's partitions bound the consumers)", t.Name))
		default:
			*problems = append(*problems, fmt.Sprintf("topic %q: %v", t.Name, t.Err))
		}
	}
	return ops, nil
}

// describeGroup returns the operations the user may perform on group,
// which need not exist yet: none if it may not describe it, unknownOps
// where the broker did not say.
func describeGroup(client sarama.Client, group string) (int32, error) {
	b, err := client.Coordinator(group) // FindCoordinator needs DESCRIBE
	if errors.Is(err, sarama.ErrGroupAuthorizationFailed) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	// Version 5, the highest sarama knows (lowered to what the broker
	// supports): version 6 answers GROUP_ID_NOT_FOUND for a group that
	// was never joined, where 5 describes it as Dead.
	resp, err := b.DescribeGroups(&sarama.DescribeGroupsRequest{Version: 5, Groups: []string{group}, IncludeAuthorizedOperations: true})
	if err != nil {
		return 0, err
	}
	for _, g := range resp.Groups {
		switch {
		case errors.Is(g.Err, sarama.ErrGroupAuthorizationFailed):
			return 0, nil
		case !errors.Is(g.Err, sarama.ErrNoError) && !errors.Is(g.Err, sarama.ErrGroupIDNotFound):
			return 0, g.Err
		case resp.Version < 3:
			return unknownOps, nil
		default:
			return g.AuthorizedOperations, nil
		}
	}
	return 0, fmt.Errorf("no answer for group %q", group)
}

// principal is the Kafka principal the brokers see: the SASL user; with
// a client certificate and no user, the certificate's subject as the
// brokers' ssl.principal.mapping.rules turn it into a name, which only
// they know; else ANONYMOUS.
func principal(k Kafka) string {
	switch {
	case k.Username != "":
		return "User:" + k.Username
	case k.TLS.Cert != "":
		return "User:<subject of " + k.TLS.Cert + ">"
	default:
		return "User:ANONYMOUS"
	}
}

// refusedLogin reports whether err is the broker refusing the SASL
// handshake or the credentials.
func refusedLogin(err error) bool {
	return errors.Is(err, sarama.ErrSASLAuthenticationFailed) || errors.Is(err, sarama.ErrUnsupportedSASLMechanism) ||
		errors.Is(err, sarama.ErrIllegalSASLState)
}
