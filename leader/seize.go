package leader

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// seizeScript is acquire.lua after deleting the lease: it always takes it,
// with a new token, so the holder's fenced writes are refused from then on.
var seizeScript = redis.NewScript("redis.call('DEL', KEYS[1])\n" + acquireLua)

// TryTake takes the lease once if it is free, for a tool that must not wait
// (cachesync position set). It returns the term, or nil and the holder's
// value ("<token> <holder>") when another process holds it.
func (l *Lease) TryTake(ctx context.Context) (*Term, string, error) {
	return l.try(ctx, acquireScript)
}

// Seize takes the lease even while another process holds it, for an
// operator who forces a tool (cachesync position set -force), never for a
// daemon: the holder's next fenced write is refused (it steps down) and its
// next renewal ends its term. A write the holder's script already made
// stays.
func (l *Lease) Seize(ctx context.Context) (*Term, error) {
	t, _, err := l.try(ctx, seizeScript)
	return t, err
}

// Holder is who holds a lease, as Inspect reads it.
type Holder struct {
	Token uint64
	ID    string        // the holder id (ha.id of a daemon)
	Left  time.Duration // until the lease expires unless renewed
}

// Inspect reads the lease called name under the keyspace of e without
// taking it; nil when nobody holds it.
func (e *Elector) Inspect(ctx context.Context, name string) (*Holder, error) {
	key := e.ks.Leader(name)
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := e.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, key)
		ttl = p.PTTL(ctx, key)
		return nil
	})
	if errors.Is(get.Err(), redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease %s: %w", name, err)
	}
	return ParseHolder(get.Val(), ttl.Val()), nil
}

// ParseHolder reads a lease value "<token> <holder>" with left to live.
func ParseHolder(value string, left time.Duration) *Holder {
	tok, id, _ := strings.Cut(value, " ")
	n, _ := strconv.ParseUint(tok, 10, 64)
	return &Holder{Token: n, ID: id, Left: max(left, 0)}
}
