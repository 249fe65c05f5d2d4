package seckill

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

var (
	//go:embed reserve.lua
	reserveSrc    string
	reserveScript = redis.NewScript(reserveSrc)
	//go:embed release.lua
	releaseSrc    string
	releaseScript = redis.NewScript(releaseSrc)
)

// Reservation errors; the HTTP layer maps each to a status.
var (
	ErrAlreadyBought = errors.New("already bought")
	ErrSoldOut       = errors.New("sold out")
	ErrNotReady      = errors.New("item not ready: its Redis keys are being rebuilt from MySQL")
	ErrUnavailable   = errors.New("unavailable")
)

// Reserved is a successful reservation.
type Reserved struct {
	Order     string `json:"order_id"`
	Item      int64  `json:"item_id"`
	User      int64  `json:"user_id"`
	Available int64  `json:"available"`
}

// sender is what Reserver needs from Kafka.
type sender interface {
	Send(ctx context.Context, m message, body []byte) error
	// Available is an error while sends are known to fail (a breaker).
	Available() error
}

// Reserver takes reservations: one Lua call in Redis that writes the
// reservation and its order message to the item's outbox, then the order
// to Kafka, then the outbox entry removed. An order Kafka may have
// written stays in the outbox for the jobs leader to produce again; one
// that was never handed to Kafka is fenced in MySQL, and the reservation
// released only if the fence row was written (notProduced).
type Reserver struct {
	cfg      Config
	rdb      redis.UniversalClient
	producer sender
	store    *Store
	soldOut  *soldOut
	kick     func(item int64) // asks for a rebuild of an item that is not ready
	known    *knownItems      // tells made-up ids (404) from items not ready (503)
	m        *metrics
	log      zerolog.Logger
	now      func() time.Time
	// batch runs the reserve script, and the outbox acknowledgements
	// (ackScript, posted) in the same pipelines.
	batch *coalescer
	// afterReserve, when set, runs between a successful reserve script
	// and the produce: the crash tests kill the process there.
	afterReserve func()
}

// run runs the pipelining workers until ctx is done; then reservations
// already queued, and every later one, get errStopped (503).
func (r *Reserver) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() { defer wg.Done(); r.batch.run(ctx) }()
	}
	wg.Wait()
	r.batch.shut()
}

// Reserve reserves one unit of item for user.
func (r *Reserver) Reserve(ctx context.Context, item, user int64) (Reserved, error) {
	if r.soldOut.has(item) {
		r.m.reservations.WithLabelValues("sold_out_local").Inc()
		return Reserved{}, ErrSoldOut
	}
	if err := r.producer.Available(); err != nil { // nothing reserved, nothing to release
		r.m.reservations.WithLabelValues("kafka_down").Inc()
		return Reserved{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Reserved{}, fmt.Errorf("%w: order id: %v", ErrUnavailable, err)
	}
	now := r.now()
	order := fmt.Sprintf("%d-%s", item, id)
	k := KeysFor(r.cfg.KeyPrefix, item)
	m := message{Order: order, User: user, Item: item, ReservedMS: now.UnixMilli()}
	body, err := json.Marshal(m)
	if err != nil {
		return Reserved{}, fmt.Errorf("%w: order message: %v", ErrUnavailable, err)
	}
	epoch := r.soldOut.epoch()
	raw, err := r.batch.do(ctx, []string{k.Stock, k.Pending, k.Buyers, k.Ready, k.Outbox}, user, order, now.UnixMilli(), body)
	res, _ := raw.([]any)
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("reserve script returned %v", raw)
	}
	if err != nil {
		r.m.reservations.WithLabelValues("redis_error").Inc()
		return Reserved{}, fmt.Errorf("%w: redis: %v", ErrUnavailable, err)
	}
	code, _ := res[0].(int64)
	switch code {
	case -1:
		r.m.reservations.WithLabelValues("already_bought").Inc()
		prior, _ := res[1].(string)
		return Reserved{Order: prior, Item: item, User: user}, ErrAlreadyBought
	case -2:
		r.soldOut.set(item, epoch)
		r.m.reservations.WithLabelValues("sold_out").Inc()
		return Reserved{}, ErrSoldOut
	case -3:
		// Not ready: a made-up id, or an item whose keys are being built.
		// Only an item known to exist is rebuilt.
		known, err := r.known.has(ctx, item)
		switch {
		case errors.Is(err, errLookupBusy):
			r.m.reservations.WithLabelValues("not_ready").Inc()
			return Reserved{}, ErrNotReady
		case err != nil:
			r.m.reservations.WithLabelValues("lookup_error").Inc()
			return Reserved{}, fmt.Errorf("%w: item lookup: %w", ErrUnavailable, err)
		case !known:
			r.m.reservations.WithLabelValues("unknown_item").Inc()
			return Reserved{}, ErrUnknownItem
		}
		r.m.reservations.WithLabelValues("not_ready").Inc()
		if r.kick != nil {
			r.kick(item)
		}
		return Reserved{}, ErrNotReady
	case 1:
	default:
		return Reserved{}, fmt.Errorf("%w: reserve script returned %v", ErrUnavailable, res)
	}
	avail, _ := res[1].(int64)
	ok := Reserved{Order: order, Item: item, User: user, Available: avail}
	if r.afterReserve != nil {
		r.afterReserve()
	}
	err = r.producer.Send(ctx, m, body)
	switch {
	case err == nil:
		// The entry is removed in one of the next pipelines, without
		// waiting: a failed acknowledgement only means the jobs leader
		// produces the order again after outbox_age, a duplicate, which
		// the consumer ignores.
		if err := r.batch.post(context.WithoutCancel(ctx), ackScript, []string{k.Outbox}, order); err != nil {
			r.log.Debug().Err(err).Str("order", order).Msg("outbox entry not removed; the order will be produced again")
		}
	case notSent(err):
		return r.notProduced(m, ok, err)
	default:
		// Kafka may have written it, or may still. The entry stays in the
		// outbox and the jobs leader produces it again after outbox_age,
		// until Kafka acknowledges: the order is as good as accepted, so
		// the answer is the reservation (202). Releasing instead needs a
		// fence in MySQL first, which cancels an order Kafka may hold and
		// can itself fail; keeping the entry never loses an order, and a
		// second copy is a duplicate the consumer ignores.
		r.m.reservations.WithLabelValues("reserved_unacked").Inc()
		r.log.Warn().Err(err).Str("order", order).Int64("item", item).Int64("user", user).
			Msg("order not acknowledged by kafka; kept in the outbox to be produced again, answered 202")
		return ok, nil
	}
	r.m.reservations.WithLabelValues("reserved").Inc()
	return ok, nil
}

// ack removes an order's outbox entry once Kafka acknowledged its message.
func (r *Reserver) ack(ctx context.Context, k Keys, order string) error {
	return ackScript.Run(context.WithoutCancel(ctx), r.rdb, []string{k.Outbox}, order).Err()
}

// notProduced settles a reservation whose order was never handed to
// Kafka (notSent: the breaker opened meanwhile, the client left first).
// This process wrote nothing, but the jobs leader may be producing the
// outbox entry at this moment (a slow request older than outbox_age). So
// the order is fenced in MySQL first (a canceled row, so a message
// consumed later is a duplicate), and what happens to the reservation
// depends on the fence:
//   - the fence row was written: the order can never be created, so the
//     Redis entries, the outbox's included, go at once (CDC of the row
//     would remove pending and buyers a moment later); ErrUnavailable
//     (503).
//   - a row exists: the order was produced and stored meanwhile. The
//     reservation is left to CDC, as for any stored order, and the answer
//     is the reservation (202).
//   - the fence failed: the outbox entry is withdrawn, so that the order
//     the user was told failed is not produced later, but pending and
//     buyers stay: an order being produced by the jobs leader could still
//     be stored. The orphan reaper fences the entry after OrphanAge if
//     none does. ErrUnavailable (503).
//
// The 503s are not logged here: the error says what happened and the
// HTTP handler logs it, once.
func (r *Reserver) notProduced(m message, ok Reserved, cause error) (Reserved, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	k := KeysFor(r.cfg.KeyPrefix, m.Item)
	fenced, err := r.store.Fence(ctx, m.order(), "not accepted by kafka")
	switch {
	case err != nil:
		r.m.reservations.WithLabelValues("produce_failed").Inc()
		if derr := r.ack(ctx, k, m.Order); derr != nil {
			return Reserved{}, fmt.Errorf("%w: kafka: %v; order %s not fenced (%v) and left in the outbox (%v): it will be produced later", ErrUnavailable, cause, m.Order, err, derr)
		}
		return Reserved{}, fmt.Errorf("%w: kafka: %v; order %s not fenced, reservation kept for the orphan reaper: %v", ErrUnavailable, cause, m.Order, err)
	case !fenced:
		_ = r.ack(ctx, k, m.Order) // stored: producing it again would be a duplicate
		r.m.reservations.WithLabelValues("reserved").Inc()
		r.log.Warn().Err(cause).Str("order", m.Order).Int64("item", m.Item).Int64("user", m.User).
			Msg("order not acknowledged by kafka but already stored; reservation kept, answered 202")
		return ok, nil
	}
	r.m.reservations.WithLabelValues("produce_failed").Inc()
	if err := releaseScript.Run(ctx, r.rdb, []string{k.Pending, k.Buyers, k.Outbox}, m.User, m.Order).Err(); err != nil {
		return Reserved{}, fmt.Errorf("%w: kafka: %v; order %s fenced, its release left to CDC: %v", ErrUnavailable, cause, m.Order, err)
	}
	return Reserved{}, fmt.Errorf("%w: kafka: %v; order %s fenced and released", ErrUnavailable, cause, m.Order)
}

// soldOut remembers items Redis called sold out, so their requests are
// answered without a round trip. A flag is dropped when an invalidation
// names one of the item's keys (CDC raised the stock, or an order left
// pending); all are dropped when invalidations may have been missed, and
// none is trusted while not subscribed. A flag is set only if no
// invalidation of the item arrived since its Redis call began (epoch), so
// an answer that raced a restock cannot outlive it.
type soldOut struct {
	mu      sync.RWMutex
	flags   map[int64]bool
	lastInv map[int64]uint64 // item → clock at its last invalidation
	flushAt uint64
	clock   uint64
	live    func() bool
	prefix  string
}

func newSoldOut(prefix string, live func() bool) *soldOut {
	return &soldOut{flags: map[int64]bool{}, lastInv: map[int64]uint64{}, live: live, prefix: prefix}
}

func (s *soldOut) has(item int64) bool {
	if s.live != nil && !s.live() {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.flags[item]
}

func (s *soldOut) epoch() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.clock
}

func (s *soldOut) set(item int64, since uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastInv[item] <= since && s.flushAt <= since {
		s.flags[item] = true
	}
}

// invalidated handles one invalidation message; flush drops everything.
func (s *soldOut) invalidated(keys []string, flush bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock++
	if flush {
		clear(s.flags)
		s.flushAt = s.clock
		return
	}
	for _, k := range keys {
		if item, ok := itemOfKey(s.prefix, k); ok {
			delete(s.flags, item)
			s.lastInv[item] = s.clock
		}
	}
}

// ReserveLua is the reservation script's source, for benchmarks that run
// it without the daemon (redis-benchmark EVALSHA).
func ReserveLua() string { return reserveSrc }
