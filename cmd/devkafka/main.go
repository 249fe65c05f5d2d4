// Command devkafka runs a single in-process Kafka-protocol broker (kfake from
// franz-go) for `make run`: there is no Kafka in Debian. It is a development
// tool, not a Kafka replacement.
//
//	devkafka [-addr 127.0.0.1:39092] [-data-dir DIR] [-topic NAME:PARTITIONS]...
//
// It creates each -topic that does not exist yet (an existing topic keeps its
// partition count; a different count is logged as a warning), logs one line
// when it accepts clients, and on SIGTERM or SIGINT closes the broker, which
// writes its state to -data-dir, and exits 0. Without -data-dir all data is
// lost on exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/IBM/sarama"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// topicFlags collects repeated -topic NAME:PARTITIONS flags.
type topicFlags map[string]int32

func (f topicFlags) String() string {
	var ts []string
	for name, parts := range f {
		ts = append(ts, fmt.Sprintf("%s:%d", name, parts))
	}
	slices.Sort(ts)
	return strings.Join(ts, ",")
}

func (f topicFlags) Set(s string) error {
	name, parts, ok := strings.Cut(s, ":")
	n, err := strconv.ParseInt(parts, 10, 32)
	if !ok || name == "" || err != nil || n < 1 {
		return fmt.Errorf("want NAME:PARTITIONS with PARTITIONS ≥ 1, got %q", s)
	}
	f[name] = int32(n)
	return nil
}

func run(args []string) int {
	fs := flag.NewFlagSet("devkafka", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:39092", "listen address; also the address clients are told to use")
	dataDir := fs.String("data-dir", "", "keep topics, records and group offsets in this directory across restarts")
	topics := make(topicFlags)
	fs.Var(topics, "topic", "create topic NAME:PARTITIONS if missing (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := zerolog.New(os.Stderr).With().Timestamp().Str("component", "devkafka").Logger()
	if host, _, err := net.SplitHostPort(*addr); err != nil || net.ParseIP(host) == nil || net.ParseIP(host).IsUnspecified() {
		// kfake advertises the listener's address in metadata, so clients
		// must be able to dial it.
		log.Error().Str("addr", *addr).Msg("-addr must be IP:PORT with a specific IP (clients connect to it)")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, *addr) }),
		kfake.WithLogger(kfake.BasicLogger(os.Stderr, kfake.LogLevelWarn)),
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		log.Error().Err(err).Str("addr", *addr).Msg("start broker")
		return 1
	}
	if err := createTopics(*addr, topics, log); err != nil {
		c.Close()
		log.Error().Err(err).Msg("create topics")
		return 1
	}
	log.Info().Str("addr", *addr).Str("data_dir", *dataDir).Str("topics", topics.String()).Msg("ready")

	<-ctx.Done()
	c.Close()
	log.Info().Msg("stopped")
	return 0
}

// createTopics creates the topics that do not exist on the broker at addr.
func createTopics(addr string, topics topicFlags, log zerolog.Logger) error {
	cfg := sarama.NewConfig()
	cfg.ClientID = "devkafka"
	admin, err := sarama.NewClusterAdmin([]string{addr}, cfg)
	if err != nil {
		return err
	}
	defer admin.Close()
	have, err := admin.ListTopics()
	if err != nil {
		return err
	}
	var errs []error
	for name, parts := range topics {
		if d, ok := have[name]; ok {
			if d.NumPartitions != parts {
				log.Warn().Str("topic", name).Int32("partitions", d.NumPartitions).Int32("want", parts).
					Msg("topic exists with another partition count; remove the data directory to recreate it")
			}
			continue
		}
		if err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: parts, ReplicationFactor: 1}, false); err != nil {
			errs = append(errs, fmt.Errorf("topic %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
