package sink

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

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
	vp, lp := a.ks.Version(""), a.ks.Lease("")
	total := 0
	var cursor uint64
	for {
		keys, next, err := a.rdb.Scan(ctx, cursor, "", 1000).Result()
		if err != nil {
			return total, fmt.Errorf("scan keys: %w", err)
		}
		seen := make(map[string]bool, len(keys))
		var data, rest []string
		for _, k := range keys {
			switch {
			case strings.HasPrefix(k, vp):
				rest = append(rest, k) // every version: none may hold back the snapshot
				if d := k[len(vp):]; a.rules.Owns(d) && !seen[d] {
					seen[d] = true
					data = append(data, d)
				}
			case strings.HasPrefix(k, lp):
				if d := k[len(lp):]; a.rules.Owns(d) && !seen[d] {
					seen[d] = true
					data = append(data, d)
				}
			case strings.HasPrefix(k, a.ks.Prefix):
			case a.rules.Owns(k) && !seen[k]:
				seen[k] = true
				data = append(data, k)
			}
		}
		for _, d := range data {
			rest = append(rest, a.ks.Version(d), a.ks.Lease(d))
		}
		if len(data)+len(rest) > 0 {
			n, err := a.deleteKeys(ctx, f, data, rest)
			if err != nil {
				return total, err
			}
			total += n
		}
		if cursor = next; cursor == 0 {
			return total, nil
		}
	}
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
	return a.resyncStep(ctx, f, args, append(append([]string(nil), data...), other...))
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
