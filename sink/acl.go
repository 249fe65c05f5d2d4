package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

// ErrACL wraps the commands, keys and channels the Redis user may not use.
var ErrACL = errors.New("redis ACL")

// ErrACLUnchecked: the server cannot answer the check (Redis < 7).
var ErrACLUnchecked = errors.New("redis ACL not checked")

// aclScript answers, for each probe in ARGV (a count, then the command
// and its arguments), whether the current user may run it, with
// redis.acl_check_cmd (Redis ≥ 7): nothing is run. It returns the
// 1-based numbers of the refused probes.
var aclScript = redis.NewScript(`
local bad, i, n = {}, 1, 0
while i <= #ARGV do
  n = n + 1
  local c = tonumber(ARGV[i])
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, i + 1, i + c))
  if not ok or not allowed then
    bad[#bad + 1] = n
  end
  i = i + c + 1
end
return bad
`)

// CheckACL asks Redis whether the connected user may run every probe (a
// command with the arguments the daemon sends it with: its keys and
// channels), in one script call that runs none of them, and returns
// every refusal (wrapping ErrACL) naming the user. A user without
// permission for scripts, or a Redis older than 7 (no
// redis.acl_check_cmd), is reported as such.
func CheckACL(ctx context.Context, rdb redis.UniversalClient, probes [][]string) error {
	user, err := rdb.Do(ctx, "ACL", "WHOAMI").Text()
	if err != nil {
		if !isNoPerm(err) {
			return err
		}
		user = "(ACL WHOAMI refused)"
	}
	var args []any
	for _, p := range probes {
		args = append(args, len(p))
		for _, a := range p {
			args = append(args, a)
		}
	}
	bad, err := aclScript.Eval(ctx, rdb, nil, args...).Int64Slice()
	switch {
	case isNoPerm(err):
		return fmt.Errorf("%w: user %q may not run scripts (EVAL, EVALSHA: +@scripting), which every write needs: %v", ErrACL, user, err)
	case err != nil && strings.Contains(err.Error(), "acl_check_cmd"):
		return fmt.Errorf("%w: redis.acl_check_cmd needs Redis 7: %w", ErrACLUnchecked, err)
	case err != nil:
		return err
	}
	if len(bad) == 0 {
		return nil
	}
	lines := make([]string, 0, len(bad))
	for _, n := range bad {
		lines = append(lines, strings.Join(probes[n-1], " "))
	}
	return fmt.Errorf("%w: user %q may not run (grant the command, and the key or channel pattern):\n  - %s", ErrACL, user, strings.Join(lines, "\n  - "))
}

func isNoPerm(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOPERM")
}

// ACLProbes are the commands the CDC, the read path and the leases send,
// on a key of each kind they touch (application keys as the rules'
// templates render them, with "0" for every column) and on channel.
func (rs *Rules) ACLProbes(ks keyspace.Keyspace, channel string) [][]string {
	var keys []string
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, t := range rs.order {
		for _, r := range rs.byTable[t] {
			for _, k := range r.keys {
				add(k.Example())
			}
			if r.key != nil {
				add(r.key.Example())
			}
		}
	}
	app := append([]string(nil), keys...)
	for _, k := range app {
		add(ks.Version(k))
		add(ks.Lease(k))
	}
	for _, k := range []string{ks.Checkpoint(), ks.Seq(), ks.Snapshot(), ks.SnapshotProgress(), ks.Resync(), ks.Leader("cdc"), ks.Fence("cdc")} {
		add(k)
	}
	// Every key is read and written (scripts GET, SET, DEL, HSET… it).
	var probes [][]string
	for _, k := range keys {
		probes = append(probes, []string{"GET", k}, []string{"DEL", k})
	}
	k := keys[0]
	return append(probes, [][]string{
		{"SET", k, "v"}, {"MSET", k, "v"}, {"EXISTS", k}, {"TYPE", k}, {"PTTL", k}, {"INCR", k},
		{"HGET", k, "f"}, {"HSET", k, "f", "v"}, {"HDEL", k, "f"}, {"HGETALL", k},
		{"SADD", k, "m"}, {"SREM", k, "m"}, {"SSCAN", k, "0"}, {"ZREM", k, "m"},
		{"EVALSHA", "0000000000000000000000000000000000000000", "0"}, {"EVAL", "return 1", "0"},
		{"WATCH", k}, {"MULTI"}, {"EXEC"}, {"UNWATCH"},
		{"SCRIPT", "LOAD", "return 1"}, {"SCRIPT", "EXISTS", "0000000000000000000000000000000000000000"}, {"SCAN", "0"}, {"INFO", "memory"}, {"PING"}, {"TIME"},
		{"PUBLISH", channel, "m"}, {"SUBSCRIBE", channel},
	}...)
}

// CheckRedis runs the start-up checks of Redis for the rules: CheckACL
// (what the daemon sends, on the keys of ks and the rules, and on
// channel), then CheckEvictionPolicy. Refusals wrap ErrACL or
// ErrEvictionPolicy; what is only worth a warning (the ACL cannot be
// checked, a volatile-* policy) is returned in warnings.
func CheckRedis(ctx context.Context, rdb redis.UniversalClient, rules *Rules, ks keyspace.Keyspace, channel string) (warnings []string, err error) {
	switch err := CheckACL(ctx, rdb, rules.ACLProbes(ks, channel)); {
	case errors.Is(err, ErrACLUnchecked):
		warnings = append(warnings, err.Error())
	case err != nil:
		return warnings, err
	}
	w, err := CheckEvictionPolicy(ctx, rdb)
	if w != "" {
		warnings = append(warnings, w)
	}
	if ks.Cluster {
		warnings = append(warnings, rules.SlotWarnings()...)
	}
	return warnings, err
}

// CheckRedis runs CheckRedis on this applier's client, rules, keys and
// channel.
func (a *Applier) CheckRedis(ctx context.Context) (warnings []string, err error) {
	return CheckRedis(ctx, a.rdb, a.rules, a.ks, a.cfg.Channel)
}

// Example renders t with "0" for every column: a key of the form it
// writes.
func (t *Template) Example() string { return t.render("0") }
