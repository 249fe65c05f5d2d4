package seckill

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
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
	kafka := func(pw, dlq string) Kafka {
		c := Config{Enabled: true, Auth: testAuth, Kafka: Kafka{Brokers: cluster.ListenAddrs(), Topic: "orders", DeadLetterTopic: dlq,
			Username: "shop", Password: pw, Mechanism: "SCRAM-SHA-256"}}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c.Kafka
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
