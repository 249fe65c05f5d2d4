package sink

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

//go:embed resync.lua
var resyncLua string

var resyncScript = redis.NewScript(resyncLua)

// A resync rebuilds Redis as on data loss when it went back to a
// checkpoint the binlog no longer has: replay cannot bring back what the
// lost window changed, and a snapshot alone would not remove the keys of
// rows deleted in it, nor take members out of sets. So the writer, under
// its fence (pipeline runs the steps):
//
//  1. BeginResync: sets the resync marker and deletes the checkpoint,
//     together;
//  2. PurgeOwned: deletes every key the rules own (Rules.Owns), with its
//     version and fill lease, announcing them to L1 subscribers, and
//     every version key;
//  3. takes a snapshot, as after data loss: its first batch (the one that
//     writes the checkpoint) deletes the marker (EndResync does, when no
//     rule keeps state and there is no snapshot).
//
// A writer that dies on the way leaves the marker (ResyncPending), and the
// next one starts again at step 1. Until the snapshot has run, readers miss the keys, as after data
// loss; the application's own keys that a rule template happens to match
// (an invalidate rule's "goods:{id}" matches "goods:hot") are deleted too.

// ResyncPending reports whether a resync was begun and not finished.
func (a *Applier) ResyncPending(ctx context.Context) (bool, error) {
	n, err := a.rdb.Exists(ctx, a.ks.Resync()).Result()
	if err != nil {
		return false, fmt.Errorf("read resync marker: %w", err)
	}
	return n == 1, nil
}

// BeginResync sets the resync marker and deletes the checkpoint.
func (a *Applier) BeginResync(ctx context.Context, f Fence) error {
	_, err := a.resyncStep(ctx, f, []string{"begin"}, nil)
	return err
}

// EndResync deletes the resync marker.
func (a *Applier) EndResync(ctx context.Context, f Fence) error {
	_, err := a.resyncStep(ctx, f, []string{"end"}, nil)
	return err
}

// PurgeOwned deletes the keys the rules own and every version key,
// scanning the whole keyspace; it returns how many keys it deleted.
// Interrupted, it is simply called again.
func (a *Applier) PurgeOwned(ctx context.Context, f Fence) (int, error) {
	total := 0
	err := a.scan(ctx, "", func(keys []string) error {
		seen := make(map[string]bool, len(keys))
		var data, rest []string
		for _, k := range keys {
			if d, ok := a.ks.VersionOf(k); ok {
				rest = append(rest, k) // every version: none may hold back the snapshot
				if a.rules.Owns(d) && !seen[d] {
					seen[d] = true
					data = append(data, d)
				}
				continue
			}
			if d, ok := a.ks.LeaseOf(k); ok {
				if a.rules.Owns(d) && !seen[d] {
					seen[d] = true
					data = append(data, d)
				}
				continue
			}
			if !strings.HasPrefix(k, a.ks.Prefix) && a.rules.Owns(k) && !seen[k] {
				seen[k] = true
				data = append(data, k)
			}
		}
		for _, d := range data {
			rest = append(rest, a.ks.Version(d), a.ks.Lease(d))
		}
		if len(data)+len(rest) == 0 {
			return nil
		}
		n, err := a.deleteKeys(ctx, f, data, rest)
		total += n
		return err
	})
	return total, err
}

// scan calls fn with every page of SCAN MATCH match ("" for all keys), on
// every master of a cluster, one call at a time; it stops at fn's first
// error.
func (a *Applier) scan(ctx context.Context, match string, fn func(keys []string) error) error {
	var mu sync.Mutex
	one := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, match, 1000).Result()
			if err != nil {
				return fmt.Errorf("scan keys: %w", err)
			}
			if len(keys) > 0 {
				mu.Lock()
				err = fn(keys)
				mu.Unlock()
				if err != nil {
					return err
				}
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if a.cs != nil {
		return a.cs.cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return one(ctx, c) })
	}
	return one(ctx, a.rdb)
}

// announced is how resync.lua names key d in an invalidation message: "k"
// and a JSON string for "keys", or "b" and one for "keys_b64" (see
// appendKeys).
func announced(d string) string {
	if utf8.ValidString(d) {
		return "k" + string(appendJSONString(nil, d))
	}
	return "b" + string(appendKeyB64(nil, d))
}

// deleteKeys deletes data keys and other keys (their versions, fill
// leases) under fence, announcing the data keys that existed; it returns
// how many did.
func (a *Applier) deleteKeys(ctx context.Context, f Fence, data, other []string) (int, error) {
	args := []string{"keys", strconv.Itoa(len(data))}
	for _, d := range data {
		args = append(args, announced(d))
	}
	if a.cs == nil {
		return a.resyncStep(ctx, f, args, append(append([]string(nil), data...), other...))
	}
	// A cluster: each slot's keys are deleted by a script that the slot's
	// record fences (see slot.lua), then the message goes, fenced by the
	// lease.
	n, err := a.deleteInSlots(ctx, token(f), data, other)
	if err != nil {
		return 0, err
	}
	args[0] = "announce"
	_, err = a.resyncStep(ctx, f, args, nil)
	return n, err
}

// slotDelScript deletes KEYS[2..] (the first ARGV[2] of them data keys)
// in the slot whose record is KEYS[1], unless a writer with a fencing
// token newer than ARGV[1] wrote there (CSFENCED); it records ARGV[1]
// and returns how many data keys existed.
var slotDelScript = redis.NewScript(`
local tok = redis.call('HGET', KEYS[1], 'tok')
if tok and tonumber(tok) > tonumber(ARGV[1]) then
  return redis.error_reply('CSFENCED ' .. KEYS[1] .. ' was written under fencing token ' .. tok .. ', newer than ' .. ARGV[1])
end
redis.call('HSET', KEYS[1], 'tok', ARGV[1])
local gone = 0
for i = 2, #KEYS do
  local d = redis.call('DEL', KEYS[i])
  if i <= 1 + tonumber(ARGV[2]) then
    gone = gone + d
  end
end
return gone
`)

// deleteInSlots deletes data and other keys per slot with slotDelScript
// under fencing token tok; it returns how many data keys existed.
func (a *Applier) deleteInSlots(ctx context.Context, tok string, data, other []string) (int, error) {
	type group struct {
		keys  []string
		ndata int
	}
	groups := map[int]*group{}
	add := func(k string, isData bool) {
		s := keyspace.Slot(k)
		g := groups[s]
		if g == nil {
			g = &group{keys: []string{a.ks.SlotRecord(s)}}
			groups[s] = g
		}
		g.keys = append(g.keys, k)
		if isData {
			g.ndata++
		}
	}
	for _, d := range data { // data keys first in each group
		add(d, true)
	}
	for _, o := range other {
		add(o, false)
	}
	var cmds []*redis.Cmd
	_, _ = a.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, g := range groups { // EVAL: a rare path, and no NOSCRIPT in a pipeline
			cmds = append(cmds, slotDelScript.Eval(ctx, p, g.keys, tok, g.ndata))
		}
		return nil
	})
	n := 0
	for _, c := range cmds {
		gone, err := c.Int()
		if err != nil {
			if msg, ok := strings.CutPrefix(err.Error(), "CSFENCED "); ok {
				return n, a.refused(ErrFenced, msg)
			}
			return n, fmt.Errorf("delete keys: %w", err)
		}
		n += gone
	}
	return n, nil
}

func (a *Applier) resyncStep(ctx context.Context, f Fence, args []string, keys []string) (int, error) {
	fenceKey := f.Key
	if fenceKey == "" {
		fenceKey = a.ks.Leader("") // unfenced: any key will do
	}
	ks := append([]string{a.ks.Resync(), a.ks.Checkpoint(), a.ks.Seq(), fenceKey}, keys...)
	last := ""
	if s := a.lastSeq.Load(); s > 0 {
		last = strconv.FormatInt(s, 10)
	}
	argv := []any{args[0], f.Value, a.cfg.Channel, last}
	for _, x := range args[1:] {
		argv = append(argv, x)
	}
	n, err := resyncScript.Run(ctx, a.rdb, ks, argv...).Int()
	if err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "CSFENCED "); ok {
			return 0, a.refused(ErrFenced, msg)
		}
		return 0, fmt.Errorf("resync %s: %w", args[0], err)
	}
	return n, nil
}
