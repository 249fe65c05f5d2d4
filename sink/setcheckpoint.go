package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

// ErrResyncPending means a resync was begun and not finished (see
// Applier.ResyncPending): the next leader deletes the checkpoint anyway.
var ErrResyncPending = errors.New("a resync is pending")

// setCheckpointScript writes the checkpoint for an operator (cachesync
// position set), with the checks of apply.lua: it refuses unless KEYS[2]
// holds the writer's lease value ARGV[1] (CSFENCED) and the stored
// checkpoint's version is still ARGV[2] ("" for none: CSCONFLICT), and
// while the resync marker KEYS[4] exists (CSRESYNC). The old hash is
// replaced whole; the snapshot journal KEYS[3] goes, as with the first
// checkpoint apply.lua writes. Nothing is published and the seq counter is
// left alone.
var setCheckpointScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  return redis.error_reply('CSFENCED lease ' .. KEYS[2] .. ' is held by "' .. tostring(holder or '') .. '", not "' .. ARGV[1] .. '"')
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('CSRESYNC ' .. KEYS[4] .. ' is set')
end
local stored = redis.call('HGET', KEYS[1], 'version') or ''
if stored ~= ARGV[2] then
  return redis.error_reply('CSCONFLICT checkpoint version is "' .. stored .. '", not "' .. ARGV[2] .. '"')
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], 'file', ARGV[3], 'pos', ARGV[4], 'version', ARGV[5], 'gtid', ARGV[6], 'commit_us', ARGV[7])
return 1
`)

// SetCheckpoint replaces the checkpoint stored under ks with cp, for an
// operator moving where the next leader resumes. It is fenced like a
// batch: f must be a lease term the caller holds (the CDC lease, taken as
// any daemon takes it, so no daemon applies meanwhile), and expect the
// version of the checkpoint the caller read under that term (nil: none
// stored). It returns ErrFenced when the term is over, ErrConflict when the
// checkpoint changed since it was read, and ErrResyncPending when a resync
// is pending. cp.Version must be cp.Pos.Version(); a zero cp.Commit is
// stored as unknown. The snapshot journal is deleted with the old
// checkpoint; nothing is published.
func SetCheckpoint(ctx context.Context, rdb redis.UniversalClient, ks keyspace.Keyspace, f Fence, expect *Checkpoint, cp Checkpoint) error {
	if f.Key == "" || f.Value == "" {
		return errors.New("set checkpoint: a lease term is required")
	}
	if v, err := cp.Pos.Version(); err != nil || v != cp.Version {
		return fmt.Errorf("set checkpoint: version %d does not match position %s", cp.Version, cp.Pos)
	}
	want := ""
	if expect != nil {
		want = strconv.FormatUint(expect.Version, 10)
	}
	commit := ""
	if !cp.Commit.IsZero() {
		commit = strconv.FormatInt(cp.Commit.UnixMicro(), 10)
	}
	err := setCheckpointScript.Run(ctx, rdb,
		[]string{ks.Checkpoint(), f.Key, ks.Snapshot(), ks.Resync()},
		f.Value, want, cp.Pos.File, strconv.FormatUint(uint64(cp.Pos.Pos), 10),
		strconv.FormatUint(cp.Version, 10), cp.GTID, commit).Err()
	if err == nil {
		return nil
	}
	for prefix, e := range map[string]error{"CSFENCED ": ErrFenced, "CSCONFLICT ": ErrConflict, "CSRESYNC ": ErrResyncPending} {
		if msg, ok := strings.CutPrefix(err.Error(), prefix); ok {
			return fmt.Errorf("%w: %s", e, msg)
		}
	}
	return fmt.Errorf("set checkpoint: %w", err)
}
