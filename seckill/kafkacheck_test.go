package seckill

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// CheckKafka refuses, naming the brokers and the user, what no retry
// cures: a missing topic, a refused login. Before, a missing dead-letter
// topic was found when the first order was dead-lettered. kfake closes
// the connection on a failed SCRAM login where a Kafka broker answers
// SASL_AUTHENTICATION_FAILED, so here a wrong password is only named (as
// the brokers' EOF, retried); the refusal sarama builds from a broker's
// answer is checked on its own (TestRefusedLogin).
func TestCheckKafka(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "orders"), kfake.SeedTopics(1, "orders.dlq"),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "shop", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	kafka := func(pw, dlq string) *Config {
		c := Config{Enabled: true, Auth: testAuth, Kafka: Kafka{Brokers: cluster.ListenAddrs(), Topic: "orders", DeadLetterTopic: dlq,
			Username: "shop", Password: pw, Mechanism: "SCRAM-SHA-256"}}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	if err := CheckKafka(kafka("secret", "orders.dlq")); err != nil {
		t.Errorf("CheckKafka with both topics present = %v", err)
	}
	for _, tc := range []struct {
		name, pw, dlq string
		want          []string
	}{
		{"missing topic", "secret", "orders.dead", []string{`topic "orders.dead" does not exist`, `"shop"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKafka(kafka(tc.pw, tc.dlq))
			t.Logf("CheckKafka = %v", err)
			if !errors.Is(err, ErrKafka) {
				t.Fatalf("CheckKafka = %v, want ErrKafka", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not name %q", w)
				}
			}
		})
	}
}

// The error sarama returns when a broker refuses the login.
func TestRefusedLogin(t *testing.T) {
	err := sarama.Wrap(sarama.ErrOutOfBrokers, errors.New("dial: EOF"), sarama.ErrSASLAuthenticationFailed)
	if !refusedLogin(fmt.Errorf("kafka client: %w", err)) {
		t.Errorf("refusedLogin(%v) = false", err)
	}
	if refusedLogin(sarama.Wrap(sarama.ErrOutOfBrokers, errors.New("EOF"))) {
		t.Error("an unreachable broker taken for a refused login")
	}
}

// CheckKafka names each ACL the configured roles need and the user lacks,
// with the kafka-acls command that grants it, on a kfake cluster that
// enforces ACLs for SCRAM users. Before, only describing the topics was
// checked: a user who could not write to the dead-letter topic or join
// the group passed, and failed later, on the first dead-lettered order or
// in the consumer's endless rejoin loop.
func TestCheckKafkaACLs(t *testing.T) {
	acl := func(rt kmsg.ACLResourceType, name string, op kmsg.ACLOperation) kfake.ACL {
		return kfake.ACL{Resource: rt, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
	}
	topic := func(name string, op kmsg.ACLOperation) kfake.ACL { return acl(kmsg.ACLResourceTypeTopic, name, op) }
	group := func(op kmsg.ACLOperation) kfake.ACL { return acl(kmsg.ACLResourceTypeGroup, "sale", op) }
	const (
		read     = kmsg.ACLOperationRead
		write    = kmsg.ACLOperationWrite
		describe = kmsg.ACLOperationDescribe
	)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "orders"), kfake.SeedTopics(1, "orders.dlq"),
		kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.User("SCRAM-SHA-256", "full", "secret", topic("orders", write), topic("orders", read), topic("orders.dlq", write), group(read)),
		// May see the dead-letter topic but not write to it.
		kfake.User("SCRAM-SHA-256", "nodlq", "secret", topic("orders", write), topic("orders", read), topic("orders.dlq", describe), group(read)),
		// May describe the group (find its coordinator) but not join it.
		kfake.User("SCRAM-SHA-256", "describegroup", "secret", topic("orders", write), topic("orders", read), topic("orders.dlq", write), group(describe)),
		// Has no ACL on the group at all: finding its coordinator fails.
		kfake.User("SCRAM-SHA-256", "nogroup", "secret", topic("orders", write), topic("orders", read), topic("orders.dlq", write)),
		kfake.User("SCRAM-SHA-256", "producer", "secret", topic("orders", write)),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	for _, tc := range []struct {
		user  string
		roles []string
		want  []string // each missing grant, exactly
	}{
		{user: "full"},
		{user: "producer", roles: []string{RoleAPI}},
		{user: "nodlq", want: []string{
			`topic "orders.dlq": WRITE not allowed for User:nodlq (`,
			`grant: kafka-acls --add --allow-principal User:nodlq --operation Write --topic orders.dlq)`,
		}},
		{user: "describegroup", want: []string{
			`group "sale": READ not allowed for User:describegroup (`,
			`grant: kafka-acls --add --allow-principal User:describegroup --operation Read --group sale)`,
		}},
		{user: "nogroup", want: []string{
			`group "sale": READ not allowed for User:nogroup (`,
			`grant: kafka-acls --add --allow-principal User:nogroup --operation Read --group sale)`,
		}},
		{user: "producer", roles: []string{RoleJobs}, want: []string{
			`group "sale": DESCRIBE not allowed for User:producer (`,
			`grant: kafka-acls --add --allow-principal User:producer --operation Describe --group sale)`,
		}},
		{user: "producer", want: []string{
			`topic "orders": READ not allowed for User:producer (`,
			`topic "orders.dlq": WRITE not allowed for User:producer (`,
			`group "sale": READ not allowed for User:producer (`,
		}},
	} {
		t.Run(fmt.Sprintf("%s %v", tc.user, tc.roles), func(t *testing.T) {
			c := Config{Enabled: true, Auth: testAuth, Roles: tc.roles, Kafka: Kafka{Brokers: cluster.ListenAddrs(),
				Topic: "orders", DeadLetterTopic: "orders.dlq", Group: "sale", Username: tc.user, Password: "secret"}}
			c.SetDefaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err := CheckKafka(&c)
			t.Logf("CheckKafka (%v) = %v", time.Since(start).Round(time.Millisecond), err)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("CheckKafka = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrKafka) {
				t.Fatalf("CheckKafka = %v, want ErrKafka", err)
			}
			msg := err.Error()
			for _, w := range append(tc.want, cluster.ListenAddrs()[0], fmt.Sprintf("%q", tc.user)) {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not name %q", w)
				}
			}
			missing := 0
			for _, w := range tc.want {
				if strings.Contains(w, "not allowed") {
					missing++
				}
			}
			if n := strings.Count(msg, "not allowed"); n != missing {
				t.Errorf("error names %d missing grants, want %d", n, missing)
			}
		})
	}
}
