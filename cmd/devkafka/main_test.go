package main

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/rs/zerolog"
)

func TestTopicFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int32 // 0: an error
	}{
		{"cachesync.orders:8", 8},
		{"a:1", 1},
		{"a", 0},
		{":8", 0},
		{"a:0", 0},
		{"a:-1", 0},
		{"a:x", 0},
		{"a:99999999999", 0},
	} {
		f := make(topicFlags)
		err := f.Set(tc.in)
		switch {
		case tc.want == 0 && err == nil:
			t.Errorf("Set(%q) accepted: %v", tc.in, f)
		case tc.want != 0 && err != nil:
			t.Errorf("Set(%q): %v", tc.in, err)
		case tc.want != 0 && len(f) != 1:
			t.Errorf("Set(%q) = %v", tc.in, f)
		}
		for _, p := range f {
			if p != tc.want {
				t.Errorf("Set(%q): %d partitions, want %d", tc.in, p, tc.want)
			}
		}
	}
	f := topicFlags{"b": 1, "a": 8}
	if got := f.String(); got != "a:8,b:1" {
		t.Errorf("String() = %q", got)
	}
}

// TestCreateTopics: missing topics are created, existing ones keep their
// partitions.
func TestCreateTopics(t *testing.T) {
	k := testenv.StartKafka(t, testenv.KafkaTopic("cachesync.orders", 8))
	addr := k.Brokers()[0]
	topics := topicFlags{"cachesync.orders": 4, "cachesync.orders.dlq": 1}
	for range 2 { // the second run finds both
		if err := createTopics(addr, topics, zerolog.Nop()); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := sarama.NewClusterAdmin(k.Brokers(), sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	have, err := admin.ListTopics()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int32{"cachesync.orders": 8, "cachesync.orders.dlq": 1} {
		if got := have[name].NumPartitions; got != want {
			t.Errorf("%s: %d partitions, want %d", name, got, want)
		}
	}
}
