package seckill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
)

// maxTailScan bounds how many uncommitted messages waitDrained reads to
// find an item's orders; past it, it waits for the whole partition (the
// consumer has to read them anyway, and a rebuild storm after Redis lost
// its data must not read a long backlog once per item).
const maxTailScan = 100_000

// tailIdle is how long the scan waits for the next message before it gives
// up and waits for the whole partition instead (offsets that never come:
// a compacted or transactional topic).
const tailIdle = 2 * time.Second

// waitDrained waits until every order for item that is in Kafka when it is
// called has been stored by the consumer group. The rebuild calls it with
// the item paused and after the produce grace, so every order ever
// produced for the item is then either stored in MySQL, fenced there (its
// produce timed out), or in the item's partition below its end offset.
//
// The rule: the orders of the item not yet stored are among the messages
// of the partition from the group's committed offset (a message is marked
// only after its transaction committed or it was dead-lettered, so all
// below is stored) to the end. Those messages are read: if none is the
// item's — a new item, or one whose orders are all stored — nothing of it
// is in flight and the rebuild goes on at once, with the consumer down or
// behind on other items; else it waits until the committed offset passes
// the item's last one. Other items' orders never count: the rebuild reads
// only this item's stock and orders. A message whose item cannot be read
// counts as the item's, and a scan that fails, goes idle or passes
// maxTailScan falls back to waiting for the whole partition, so an order of
// the item is never skipped: skipping one would rebuild the stock without
// it while it is not pending either, and a unit would be sold twice.
func (l *lagReader) waitDrained(ctx context.Context, topic, group string, item int64) error {
	parts, err := l.client.Partitions(topic)
	if err != nil {
		return err
	}
	p, err := partitionOf(topic, item, int32(len(parts)))
	if err != nil {
		return err
	}
	end, err := l.client.GetOffset(topic, p, sarama.OffsetNewest)
	if err != nil {
		return err
	}
	from, err := l.committed(topic, group, p)
	if err != nil {
		return err
	}
	// Never committed (-1): the consumer starts at the oldest. Below the
	// oldest, retention removed the messages: no consumer will store them.
	oldest, err := l.client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return err
	}
	from = max(from, oldest)
	if from >= end {
		return nil // everything in the partition is stored (or it is empty)
	}
	want := end
	if last, ok := l.lastOrderOf(ctx, topic, p, item, from, end); ok {
		if last < 0 {
			return nil
		}
		want = last + 1
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		off, err := l.committed(topic, group, p)
		if err != nil {
			return err
		}
		if off >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("partition %d of %s not consumed up to offset %d by group %s: %w", p, topic, want, group, ctx.Err())
		case <-t.C:
		}
	}
}

// committed is the group's committed offset of a partition, -1 when it has
// none. A group that never committed is reported as unknown by some
// brokers: nothing consumed yet.
func (l *lagReader) committed(topic, group string, p int32) (int64, error) {
	resp, err := l.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {p}})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	if b := resp.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError {
		return b.Offset, nil
	}
	return -1, nil
}

// lastOrderOf reads partition p from offset from to end and returns the
// offset of the last message for item (-1: none). ok is false when the
// range was not read to its end (an error, ctx, tailIdle, maxTailScan): the
// caller must then assume the item's orders go up to end.
func (l *lagReader) lastOrderOf(ctx context.Context, topic string, p int32, item int64, from, end int64) (last int64, ok bool) {
	if end-from > maxTailScan {
		return 0, false
	}
	// A consumer per scan: two rebuilds may scan one partition at once,
	// and a sarama consumer reads a partition only once at a time.
	cons, err := sarama.NewConsumerFromClient(l.client)
	if err != nil {
		return 0, false
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, p, from)
	if err != nil {
		return 0, false
	}
	defer pc.Close()
	key := strconv.FormatInt(item, 10)
	idle := time.NewTimer(tailIdle)
	defer idle.Stop()
	last = -1
	for {
		select {
		case <-ctx.Done():
			return 0, false
		case <-idle.C:
			return 0, false
		case msg, open := <-pc.Messages():
			if !open {
				return 0, false
			}
			if msg.Offset >= end {
				return last, true
			}
			if string(msg.Key) == key || mayBeFor(msg.Value, item) {
				last = msg.Offset
			}
			if msg.Offset == end-1 {
				return last, true
			}
			idle.Reset(tailIdle)
		}
	}
}

// mayBeFor reports whether an order message may be item's: its item id
// is item, or it cannot be read.
func mayBeFor(b []byte, item int64) bool {
	var m message
	if json.Unmarshal(b, &m) != nil || m.Item <= 0 {
		return true
	}
	return m.Item == item
}
