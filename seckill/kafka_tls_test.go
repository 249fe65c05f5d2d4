package seckill

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The sale's Kafka clients over TLS, with SASL PLAIN (allowed only with
// TLS), against a broker that speaks only TLS and requires client
// certificates: the producer's order is read back by a consumer built
// from the same configuration; a wrong CA ends the start-up retry at once
// with an error naming the brokers; a plaintext client gets nowhere.
func TestKafkaTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	sc, err := f.ServerConfig(tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"),
		kfake.TLS(sc), kfake.EnableSASL(), kfake.Superuser("PLAIN", "shop", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()
	kafka := func(tc tlsconf.Config) Kafka {
		c := Config{Enabled: true, Auth: testAuth, Kafka: Kafka{Brokers: brokers, Topic: "orders", Username: "shop", Password: "secret", Mechanism: "PLAIN", TLS: tc}}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c.Kafka
	}
	k := kafka(tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p, err := NewProducer(k, 5*time.Second)
	if err != nil {
		t.Fatalf("producer over TLS: %v", err)
	}
	m := message{Order: "7-tls", User: 1, Item: 7, ReservedMS: 1}
	if err := p.Send(ctx, m, []byte(`{"over":"tls"}`)); err != nil {
		t.Fatalf("send over TLS: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	cc, err := saramaConfig(k, "test")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := sarama.NewConsumer(brokers, cc)
	if err != nil {
		t.Fatalf("consumer over TLS: %v", err)
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition("orders", 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	select {
	case msg := <-pc.Messages():
		if string(msg.Value) != `{"over":"tls"}` || string(msg.Key) != "7" {
			t.Errorf("read back key %q value %q", msg.Key, msg.Value)
		}
	case <-ctx.Done():
		t.Fatal("the order did not come back over TLS")
	}
	lr, err := newLagReader(k)
	if err != nil {
		t.Fatalf("admin client over TLS: %v", err)
	}
	lr.Close()

	// A wrong CA: the error names the brokers and the cause, and the
	// start-up retry (30 s in the daemon) gives up at once.
	t0 := time.Now()
	_, err = retry(ctx, func() (*Producer, error) {
		return NewProducer(kafka(tlsconf.Config{CA: f.OtherCA, Cert: f.ClientCert, Key: f.ClientKey}), time.Second)
	})
	if err == nil {
		t.Fatal("producer connected with the wrong CA")
	}
	t.Logf("wrong CA: %v", err)
	for _, want := range []string{"kafka producer", brokers[0], "certificate signed by unknown authority"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("wrong CA: %v\nwant it to contain %q", err, want)
		}
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("wrong CA: retried for %s", d)
	}

	// Plaintext (without SASL, which PLAIN would refuse): no answer.
	plain, err := saramaConfig(Kafka{Brokers: brokers}, "test")
	if err != nil {
		t.Fatal(err)
	}
	plain.Net.DialTimeout, plain.Net.ReadTimeout = 2*time.Second, 2*time.Second
	plain.Metadata.Retry.Max = 0
	if c, err := sarama.NewClient(brokers, plain); err == nil {
		c.Close()
		t.Error("a plaintext client connected to the TLS broker")
	}
}
