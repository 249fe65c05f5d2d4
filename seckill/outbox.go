package seckill

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// The outbox. The reserve script writes each reservation's order message
// to its item's outbox hash (Keys.Outbox, order id → message) in the same
// call as the reservation, so no crash can leave a reservation whose
// order exists nowhere. The API removes the entry once Kafka acknowledged
// the message (Reserver.ack), or with the reservation when a produce that
// never handed it to Kafka was fenced and released. An entry older than
// OutboxAge belongs to a process that died before or during its produce,
// or to a produce whose outcome is unknown (a timeout, an error after
// sarama's retries): the jobs leader produces it again and removes it
// once Kafka acknowledged (Jobs.drainOutbox).
//
// Nobody removes an entry before Kafka acknowledged its message, so no
// order is lost; the entry of an order id is written once and never
// again, so a late removal cannot hit a newer entry. A message produced
// twice (the API and the jobs leader racing, or a removal that failed) is
// a duplicate the consumer ignores. The orphan reaper leaves alone a
// reservation whose entry is still there (fenceOrphans).

// ackScript removes an outbox entry: KEYS[1] outbox, ARGV[1] order id.
var ackScript = redis.NewScript(`return redis.call('HDEL', KEYS[1], ARGV[1])`)

// outboxBatch bounds the items whose outboxes are read in one round trip,
// and the messages the jobs leader has in flight at once.
const outboxBatch = 256

// drainOutbox produces again every outbox entry older than OutboxAge and
// removes those Kafka acknowledged. Failures are left for the next run,
// and logged when they begin and when they end.
func (j *Jobs) drainOutbox(ctx context.Context) {
	items, err := j.store.Items(ctx)
	if err != nil {
		if ctx.Err() == nil {
			j.log.Warn().Err(err).Msg("outbox: list items")
		}
		return
	}
	cutoff := j.now().Add(-j.cfg.OutboxAge).UnixMilli()
	var (
		mu       sync.Mutex
		produced int
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	slots := make(chan struct{}, outboxBatch)
	waiting := 0
	for len(items) > 0 && ctx.Err() == nil {
		n := min(len(items), outboxBatch)
		batch := items[:n]
		items = items[n:]
		pipe := j.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(batch))
		for i, item := range batch {
			cmds[i] = pipe.HGetAll(ctx, KeysFor(j.cfg.KeyPrefix, item).Outbox)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			if ctx.Err() == nil {
				j.log.Warn().Err(err).Msg("outbox: read")
			}
			break
		}
		for i, item := range batch {
			k := KeysFor(j.cfg.KeyPrefix, item)
			for order, body := range cmds[i].Val() {
				m, err := decode([]byte(body))
				if err != nil || m.Order != order || m.Item != item {
					// Nothing the reserve script wrote: without its entry
					// the reservation is the orphan reaper's.
					j.m.outbox.WithLabelValues("invalid").Inc()
					j.log.Error().Err(err).Int64("item", item).Str("order", order).Str("message", body).Msg("outbox: invalid entry removed")
					_ = ackScript.Run(ctx, j.rdb, []string{k.Outbox}, order).Err()
					continue
				}
				if m.ReservedMS > cutoff {
					continue // young: its API may still be producing it
				}
				waiting++
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots }()
					err := j.producer.Send(ctx, m, []byte(body))
					if err == nil {
						err = ackScript.Run(context.WithoutCancel(ctx), j.rdb, []string{k.Outbox}, order).Err()
					}
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
						return
					}
					produced++
				}()
			}
		}
	}
	wg.Wait()
	j.m.outbox.WithLabelValues("produced").Add(float64(produced))
	j.m.outbox.WithLabelValues("failed").Add(float64(failed))
	j.m.outboxWaiting.Set(float64(waiting - produced))
	if produced > 0 {
		j.log.Info().Int("orders", produced).Msg("outbox: orders left unproduced by a crash or an unanswered send were produced")
	}
	switch {
	case failed > 0 && ctx.Err() == nil && !j.outboxFailing:
		j.outboxFailing = true
		j.log.Warn().Err(firstErr).Int("orders", failed).Msg("outbox: orders not produced; retried every job_interval, logged again once they go through")
	case failed == 0 && j.outboxFailing:
		j.outboxFailing = false
		j.log.Info().Msg("outbox: orders produced again")
	}
}
