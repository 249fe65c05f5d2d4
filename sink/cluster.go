package sink

// Applying on a Redis Cluster. A script may only take keys of one hash
// slot, so a batch is applied per slot it writes (slot.lua; the groups of
// one master go in one call, nodeLua), then by one call in the slot of
// the source's own keys (apply.lua: the ops there, the checkpoint and the
// message). What a reader sees:
//
//   - Each slot changes atomically: keys that share a hash tag (one sale
//     item's keys, "goods:{42}" and "goods:{42}:stock") move together,
//     from the state after one batch to the state after a later one.
//   - Slots do not change together: for a moment, one slot may show a
//     batch that another does not show yet.
//   - The checkpoint and the invalidation message come after every slot
//     of the batch is written: an L1 cache that drops a key on the
//     message and reads it again gets the new value.
//
// Each slot holds a record of what this source applied there (version,
// position, writer's fencing token; keyspace.SlotRecord). A batch that
// ends before the recorded version is not applied to that slot: after a
// crash between the slot groups of a batch, the replay from the
// checkpoint does not take a slot back through older states. A record
// written under a newer fencing token refuses the batch (CSFENCED); a
// writer records its token in every slot before its first batch
// (fenceSlots) and reads its lease before each batch's slot groups. The
// applier remembers what it recorded in each slot: a record that went
// back (a failover to a lagging replica, a restart from an older file)
// makes it move the checkpoint back to the record's position and replay
// from there (ErrRewind); a record gone makes it rebuild (ErrRedisReset).
// It checks each slot at its next write, and every slot it wrote when the
// master serving it changed or restarted (watchSlots).

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cenkalti/backoff/v5"
	"github.com/redis/go-redis/v9"
)

//go:embed slot.lua
var slotHead string

// nodeLua applies several slot groups of one master in one call: slot.lua
// as a function of each group's keys and arguments (the parameters hide
// the globals). A script may take keys of one slot only, unless flagged
// allow-cross-slot-keys (Redis 7), and then only undeclared keys of its
// node: KEYS[1] is the first group's record, for routing; ARGV holds, per
// group, its number of keys and of arguments, then both. Before a group
// writes, one EXISTS of all its keys makes sure they are all here: in a
// slot that is moving, a key already gone makes it fail (ASK or
// TRYAGAIN) before any write of the group, and the batch goes per slot.
// A refusal stops the call there (the groups before it are applied).
// It returns each group's answer in order.
var nodeLua = func() string {
	return "#!lua flags=allow-cross-slot-keys\nlocal function group(KEYS, ARGV)\n" +
		"redis.call('EXISTS', unpack(KEYS))\n" + slotLua + "\nend\n" + `
local out, a = {}, 1
while a <= #ARGV do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local keys = {unpack(ARGV, a + 2, a + 1 + nk)}
  local args = {unpack(ARGV, a + 2 + nk, a + 1 + nk + na)}
  local r = group(keys, args)
  if type(r) == 'table' and r.err then
    return r
  end
  out[#out + 1] = r
  a = a + 2 + nk + na
end
return out
`
}()

// slotLua is slot.lua with apply.lua's ops in place of its --OPS-- line.
var slotLua = func() string {
	i, j := strings.Index(applyLua, "-- ops:"), strings.Index(applyLua, "-- end of ops")
	if i < 0 || j < i || !strings.Contains(slotHead, "--OPS--\n") {
		panic("sink: apply.lua or slot.lua lost its ops markers")
	}
	return strings.Replace(slotHead, "--OPS--\n", applyLua[i:j], 1)
}()

// slotMark is what the applier knows of a slot it wrote: the version its
// record holds ("0": none, the batches had no position) and the master
// that served it when it was first written or last checked (address and
// run id: a failover or a restart changes it).
type slotMark struct {
	ver  string
	node string
	// from is the checkpoint before this run first wrote the slot, if
	// the slot had no record then: should the record vanish, the replay
	// from there rewrites all that the slot holds of this source.
	from *Checkpoint
}

// clusterState is the applier's knowledge of the slots it wrote in this
// run (reset by Run).
type clusterState struct {
	cc      *redis.ClusterClient
	script  *redis.Script // slot.lua
	nodeScr *redis.Script // nodeLua
	// perNode: slot groups go in one call per master (runPerNode).
	perNode bool
	// loaded: the scripts were loaded on every master in this run (a new
	// cluster has none; EVALSHA would answer NOSCRIPT, logged as a failure).
	loaded bool
	// batches that went by node, and that went by slot (tests).
	byNode, bySlot int
	marks          map[int]slotMark
	mu             sync.Mutex
	runIDs         map[string]string // master address → run id, refreshed by watchSlots
	// start is the checkpoint the run started from (nil: none).
	start *Checkpoint
	// between, if set, is called after a batch's slot groups were applied
	// and before its checkpoint; an error stops the batch there (tests).
	between func(*batch) error
	// crashAfter counts down the batches until the process kills itself
	// between slot groups (CACHESYNC_CRASH_AFTER_SLOTS, for tests).
	crashAfter int
}

func newClusterState(cc *redis.ClusterClient) *clusterState {
	s := &clusterState{cc: cc, script: redis.NewScript(slotLua), nodeScr: redis.NewScript(nodeLua), perNode: true,
		marks: map[int]slotMark{}, runIDs: map[string]string{}}
	// A test hook: the crash the slot records are for, at a chosen batch.
	s.crashAfter, _ = strconv.Atoi(os.Getenv("CACHESYNC_CRASH_AFTER_SLOTS"))
	return s
}

// node names the master serving slot now, as the client's slot map
// (reloaded every second) has it.
func (s *clusterState) node(ctx context.Context, slot int) string {
	c, err := s.cc.MasterForKey(ctx, "{"+keyspace.SlotTag(slot)+"}")
	if err != nil {
		return ""
	}
	addr := c.Options().Addr
	s.mu.Lock()
	defer s.mu.Unlock()
	return addr + " " + s.runIDs[addr]
}

// token is the fencing token of f's lease value ("<token> <holder>"), "0"
// for none.
func token(f Fence) string {
	tok, _, _ := strings.Cut(f.Value, " ")
	if _, err := strconv.ParseUint(tok, 10, 64); err != nil {
		return "0"
	}
	return tok
}

// applySlots runs the batch's slot groups, in parallel (a pipeline the
// client splits by node), then its own script in the slot of the
// checkpoint; it returns the seq that one published. A slot group that
// failed is sent again with the whole batch (a slot that has it is
// written again with the same state).
func (a *Applier) applySlots(ctx context.Context, b *batch) (int64, error) {
	cs := a.cs
	if !cs.loaded {
		if err := a.loadSlotScript(ctx); err != nil {
			return 0, err
		}
		cs.loaded = true
	}
	if len(b.slots) > 0 {
		// The lease is in the source's slot, out of the slot groups'
		// reach: read it first. A writer whose lease was taken since
		// (seized, or expired while it was paused) stops here; one paused
		// between this read and its writes meets the new writer's token
		// in every slot record (fenceSlots).
		if b.fence.Value != "" {
			holder, err := cs.cc.Get(ctx, b.fence.Key).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return 0, err
			}
			if holder != b.fence.Value {
				return 0, fmt.Errorf("CSFENCED lease %s is held by %q, not %q", b.fence.Key, holder, b.fence.Value)
			}
		}
		b.finishSlots(token(b.fence), func(slot int) string { return cs.marks[slot].ver })
		var failed, lost error
		for slot, r := range a.runGroups(ctx, b) {
			res, err := r.res, r.err
			switch {
			case err == nil && len(res) == 2:
				m, ok := cs.marks[slot]
				if !ok && res[1] == int64(0) {
					m.from = a.Applied()
					if m.from == nil {
						m.from = cs.start
					}
				}
				if !ok { // later writes check the record themselves
					m.node = cs.node(ctx, slot)
				}
				m.ver, _ = res[0].(string)
				cs.marks[slot] = m
			case err == nil:
				failed = fmt.Errorf("slot script answered %v", res)
			case strings.HasPrefix(err.Error(), "CSFENCED "):
				return 0, err
			case strings.HasPrefix(err.Error(), "CSREWIND "), strings.HasPrefix(err.Error(), "CSRESET "):
				lost = err
			case strings.HasPrefix(err.Error(), "NOSCRIPT"):
				if err := a.loadSlotScript(ctx); err != nil {
					return 0, err
				}
				failed = err
			default:
				failed = err
			}
		}
		if lost != nil {
			return 0, a.slotsLost(ctx, b, lost)
		}
		if failed != nil {
			return 0, failed
		}
	}
	if cs.between != nil {
		if err := cs.between(b); err != nil {
			return 0, err
		}
	}
	if cs.crashAfter > 0 && b.cp != nil {
		if cs.crashAfter--; cs.crashAfter == 0 {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Minute)
		}
	}
	return a.script.Run(ctx, a.rdb, b.keys, b.args...).Int64()
}

// groupResult is what a slot group's call answered.
type groupResult struct {
	res []any
	err error
}

// runGroups runs the slot groups of b: one call per master that serves
// them (node.lua), or, when that is off or fails for a reason other than
// a refusal (a slot moving, a stale slot map), one call per slot.
func (a *Applier) runGroups(ctx context.Context, b *batch) map[int]groupResult {
	cs := a.cs
	out := make(map[int]groupResult, len(b.slots))
	if cs.perNode && len(b.slots) >= perNodeMin {
		if a.runPerNode(ctx, b, out) {
			cs.byNode++
			return out
		}
		clear(out)
	}
	cs.bySlot++
	cmds := make(map[int]*redis.Cmd, len(b.slots))
	_, _ = cs.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for slot, sub := range b.slots {
			cmds[slot] = p.EvalSha(ctx, cs.script.Hash(), sub.keys, sub.args...)
		}
		return nil
	})
	for slot, cmd := range cmds {
		res, err := cmd.Slice()
		out[slot] = groupResult{res, err}
	}
	return out
}

// perNodeMin is the fewest slot groups for which a batch goes by node.
const perNodeMin = 4

// runPerNode runs b's slot groups with one node.lua call per master, as
// the client's slot map has them; false when a call failed for another
// reason than a refusal (the caller runs them per slot then: a group a
// failed call applied is applied again with the same state, which
// changes nothing).
func (a *Applier) runPerNode(ctx context.Context, b *batch, out map[int]groupResult) bool {
	cs := a.cs
	type call struct {
		slots []int
		keys  []string
		args  []any
	}
	byNode := map[string]*call{}
	for slot, sub := range b.slots {
		c, err := cs.cc.MasterForKey(ctx, sub.keys[0])
		if err != nil {
			return false
		}
		n := byNode[c.Options().Addr]
		if n == nil {
			n = &call{keys: []string{sub.keys[0]}}
			byNode[c.Options().Addr] = n
		}
		n.slots = append(n.slots, slot)
		n.args = append(n.args, len(sub.keys), len(sub.args))
		for _, k := range sub.keys {
			n.args = append(n.args, k)
		}
		n.args = append(n.args, sub.args...)
	}
	calls := make(map[*call]*redis.Cmd, len(byNode))
	_, _ = cs.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, n := range byNode {
			calls[n] = p.EvalSha(ctx, cs.nodeScr.Hash(), n.keys, n.args...)
		}
		return nil
	})
	ok := true
	for n, cmd := range calls {
		res, err := cmd.Slice()
		switch {
		case err != nil && strings.HasPrefix(err.Error(), "CS"):
			for _, slot := range n.slots {
				out[slot] = groupResult{err: err}
			}
		case err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT"):
			_ = a.loadSlotScript(ctx)
			ok = false
		case err != nil || len(res) != len(n.slots):
			ok = false
		default:
			for i, slot := range n.slots {
				r, _ := res[i].([]any)
				out[slot] = groupResult{res: r}
			}
		}
	}
	return ok
}

// loadSlotScript loads slot.lua on every master: EVALSHA goes first, and a
// master that lacks the script (new, restarted, failed over) answers
// NOSCRIPT.
func (a *Applier) loadSlotScript(ctx context.Context) error {
	return a.cs.cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		if err := a.cs.nodeScr.Load(ctx, c).Err(); err != nil && a.cs.perNode {
			// A Redis before 7.0 has no script flags: per slot only.
			a.cs.perNode = false
			a.log.Warn().Err(err).Msg("redis cluster: node.lua refused; applying one call per slot")
		}
		return a.cs.script.Load(ctx, c).Err()
	})
}

// slotsLost handles a slot group's CSREWIND or CSRESET (cause): every slot
// written in this run is checked, and the checkpoint moved back to the
// oldest record that went back, so that the replay from it (ErrRewind)
// brings those slots up again; a record gone is a loss only a snapshot
// repairs (ErrRedisReset). It returns the error to end Run with.
func (a *Applier) slotsLost(ctx context.Context, b *batch, cause error) error {
	slots := make([]int, 0, len(a.cs.marks))
	for slot := range a.cs.marks {
		slots = append(slots, slot)
	}
	for slot := range b.slots { // the slot that answered may be new to marks
		if _, ok := a.cs.marks[slot]; !ok {
			slots = append(slots, slot)
		}
	}
	err := a.checkSlots(ctx, slots, b.fence, b.args[10].(string))
	if err == nil { // the records are as marked again: e.g. written meanwhile
		return cause
	}
	return err
}

// checkSlots compares the records of slots with what this run marked
// there. Nil when none went back. Else the checkpoint (expected at
// version expect, "" for none) is moved back to the oldest record that
// did, under fence f, and it returns the ErrRewind refusal, or ErrRedisReset
// when a record is gone.
func (a *Applier) checkSlots(ctx context.Context, slots []int, f Fence, expect string) error {
	cs := a.cs
	cmds := make(map[int]*redis.SliceCmd, len(slots))
	if _, err := cs.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, slot := range slots {
			cmds[slot] = p.HMGet(ctx, a.ks.SlotRecord(slot), "ver", "file", "pos", "gtid", "commit_us", "tok")
		}
		return nil
	}); err != nil {
		return err
	}
	var oldest *Checkpoint
	oldestSlot := -1
	var gone []int // records this run created that vanished
	for slot, cmd := range cmds {
		want, ok := cs.marks[slot]
		if !ok {
			continue
		}
		v := cmd.Val()
		if v[5] == nil && want.from == nil {
			return a.refused(ErrRedisReset, fmt.Sprintf("%s missing: Redis lost the data of slot %d", a.ks.SlotRecord(slot), slot))
		}
		if v[5] == nil { // all its writes were in this run: replay them
			if oldest == nil || want.from.Version < oldest.Version {
				oldest, oldestSlot = want.from, slot
			}
			gone = append(gone, slot)
			continue
		}
		have, _ := strconv.ParseUint(str(v[0]), 10, 64)
		wantV, _ := strconv.ParseUint(want.ver, 10, 64)
		if have >= wantV {
			continue
		}
		if v[0] == nil { // went back to a record without a position
			return a.refused(ErrRedisReset, fmt.Sprintf("%s went back to before its first position (slot %d)", a.ks.SlotRecord(slot), slot))
		}
		pos, _ := strconv.ParseUint(str(v[2]), 10, 32)
		cp := &Checkpoint{Pos: binlog.Position{File: str(v[1]), Pos: uint32(pos)}, Version: have, GTID: str(v[3])}
		if us, err := strconv.ParseInt(str(v[4]), 10, 64); err == nil {
			cp.Commit = time.UnixMicro(us)
		}
		if oldest == nil || cp.Version < oldest.Version {
			oldest, oldestSlot = cp, slot
		}
	}
	if oldest == nil {
		return nil
	}
	if expect == "" { // no checkpoint yet to replay from: a snapshot runs
		return a.refused(ErrRedisReset, fmt.Sprintf("slot %d went back during the snapshot", oldestSlot))
	}
	if err := moveCheckpointBack(ctx, a.rdb, a.ks, f, expect, *oldest, gone); err != nil {
		if r := a.refusal(err.Error()); r != nil {
			return r
		}
		return err
	}
	return a.refused(ErrRewind, fmt.Sprintf("slot %d went back to version %d (%s): replaying from there", oldestSlot, oldest.Version, oldest.Pos))
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// rewindScript moves the checkpoint KEYS[1] back to ARGV[3..7] (file,
// pos, version, gtid, commit µs) if it is past it, fenced by the lease
// KEYS[2] holding ARGV[1] ("" unfenced) and refused if another writer
// moved it past ARGV[2], the version this writer expects ("" none). It
// clears the slots ARGV[8..] in the bitmap of written slots KEYS[3]:
// their records vanished, and the replay writes them again.
var rewindScript = redis.NewScript(`
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder ~= ARGV[1] then
    return redis.error_reply('CSFENCED lease ' .. KEYS[2] .. ' is held by "' .. tostring(holder or '') .. '", not "' .. ARGV[1] .. '"')
  end
end
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and ARGV[2] ~= '' and tonumber(stored) > tonumber(ARGV[2]) then
  return redis.error_reply('CSCONFLICT checkpoint ' .. stored .. ' is newer than ' .. ARGV[2] .. ': another writer moved it')
end
if stored and tonumber(stored) > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'file', ARGV[3], 'pos', ARGV[4], 'version', ARGV[5], 'gtid', ARGV[6], 'commit_us', ARGV[7])
end
for i = 8, #ARGV do
  redis.call('SETBIT', KEYS[3], ARGV[i], 0)
end
return 1
`)

// moveCheckpointBack runs rewindScript (see there); a refusal is returned
// as the script's text, for Applier.refusal.
func moveCheckpointBack(ctx context.Context, rdb redis.UniversalClient, ks keyspace.Keyspace, f Fence, expect string, cp Checkpoint, gone []int) error {
	lease := f.Key
	if lease == "" {
		lease = ks.Checkpoint()
	}
	commit := ""
	if !cp.Commit.IsZero() {
		commit = strconv.FormatInt(cp.Commit.UnixMicro(), 10)
	}
	args := []any{f.Value, expect, cp.Pos.File, strconv.FormatUint(uint64(cp.Pos.Pos), 10), strconv.FormatUint(cp.Version, 10), cp.GTID, commit}
	for _, s := range gone {
		args = append(args, s)
	}
	err := rewindScript.Run(ctx, rdb, []string{ks.Checkpoint(), lease, ks.WrittenSlots()}, args...).Err()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) && strings.HasPrefix(err.Error(), "CS") {
			return errors.New(err.Error())
		}
		return fmt.Errorf("move the checkpoint back: %w", err)
	}
	return nil
}

// watchSlots checks the records of the slots whose master changed (a
// failover, a migration) or restarted since this run wrote them, as
// checkSlots does. Called every second; a failing call is no finding.
func (a *Applier) watchSlots(ctx context.Context, f Fence, expect string) error {
	cs := a.cs
	if len(cs.marks) == 0 {
		return nil
	}
	ids := map[string]string{}
	var mu sync.Mutex
	err := cs.cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(info, "\n") {
			if id, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
				mu.Lock()
				ids[c.Options().Addr] = id
				mu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		return nil
	}
	cs.mu.Lock()
	cs.runIDs = ids
	cs.mu.Unlock()
	var moved []int
	for slot, m := range cs.marks {
		if cs.node(ctx, slot) != m.node {
			moved = append(moved, slot)
		}
	}
	if len(moved) == 0 {
		return nil
	}
	if err := a.checkSlots(ctx, moved, f, expect); err != nil {
		if isRefusal(err) {
			return err
		}
		return nil // Redis did not answer: next time
	}
	for _, slot := range moved { // as it should be: serving it now
		m := cs.marks[slot]
		m.node = cs.node(ctx, slot)
		cs.marks[slot] = m
	}
	return nil
}

// dropSlotJournals deletes the slots' snapshot journals once the first
// checkpoint is written (apply.lua deletes its own): a journal left over
// would have the next unfinished snapshot's discard delete keys that are
// in place.
func (a *Applier) dropSlotJournals(ctx context.Context) error {
	return a.slotJournals(ctx, func(journal string) error {
		return a.rdb.Del(ctx, journal).Err()
	})
}

// slotJournals calls fn with every slot journal of this source, on every
// master (see scan).
func (a *Applier) slotJournals(ctx context.Context, fn func(journal string) error) error {
	match := globEscape(a.ks.Prefix) + "snapshot:{*}:" + globEscape(a.ks.Source)
	return a.scan(ctx, match, func(keys []string) error {
		for _, k := range keys {
			if err := fn(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// globEscape quotes the characters SCAN's MATCH treats as a pattern.
func globEscape(s string) string {
	var b strings.Builder
	appendGlobEscaped(&b, s)
	return b.String()
}

// appendGlobEscaped appends s to b with SCAN MATCH's pattern characters
// quoted.
func appendGlobEscaped(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
}

// unmarked lists the slots of b's slot groups that this run has not
// written yet: the batch records them in the bitmap of written slots
// (again, after a restart: SETBIT is idempotent).
func (s *clusterState) unmarked(b *batch) []int {
	var out []int
	for slot := range b.slots {
		if _, ok := s.marks[slot]; !ok {
			out = append(out, slot)
		}
	}
	return out
}

// slotsKept checks, before a run resumes from the checkpoint, that the
// record of every slot this source ever wrote (the bitmap of written
// slots) still exists: a master that lost its data while no writer ran
// (a restart without persistence that no replica took over) took them
// with it, and only a snapshot repairs that (ErrRedisReset). A failing
// call is returned as it is, to be retried.
func (a *Applier) slotsKept(ctx context.Context) error {
	bits, err := a.cs.cc.Get(ctx, a.ks.WrittenSlots()).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return err
	}
	var slots []int
	for i, c := range bits {
		for j := range 8 {
			if c&(0x80>>j) != 0 {
				slots = append(slots, i*8+j)
			}
		}
	}
	cmds := make(map[int]*redis.BoolCmd, len(slots))
	if _, err := a.cs.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, slot := range slots {
			cmds[slot] = p.HExists(ctx, a.ks.SlotRecord(slot), "tok")
		}
		return nil
	}); err != nil {
		return err
	}
	for slot, c := range cmds {
		if !c.Val() {
			return backoff.Permanent(a.refused(ErrRedisReset, fmt.Sprintf("%s missing: Redis lost the data of slot %d", a.ks.SlotRecord(slot), slot)))
		}
	}
	return nil
}

// fenceSlotScript records fencing token ARGV[1] in the slot record
// KEYS[1] unless a newer one is there: then it answers CSFENCED.
var fenceSlotScript = redis.NewScript(`
local tok = redis.call('HGET', KEYS[1], 'tok')
if tok and tonumber(tok) > tonumber(ARGV[1]) then
  return redis.error_reply('CSFENCED ' .. KEYS[1] .. ' was written under fencing token ' .. tok .. ', newer than ' .. ARGV[1])
end
if tok ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'tok', ARGV[1])
end
return 1
`)

// fenceSlots records the writer's fencing token in the record of every
// slot before its first batch, so that a writer with an older token (one
// that lost the lease while paused after it read it) is refused by every
// slot from then on, not only by those this writer has written.
func (a *Applier) fenceSlots(ctx context.Context, f Fence) error {
	tok := token(f)
	if err := fenceSlotScript.Load(ctx, a.rdb).Err(); err != nil { // on every master
		return err
	}
	cmds := make([]*redis.Cmd, 0, keyspace.Slots)
	_, _ = a.cs.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for slot := range keyspace.Slots {
			cmds = append(cmds, p.EvalSha(ctx, fenceSlotScript.Hash(), []string{a.ks.SlotRecord(slot)}, tok))
		}
		return nil
	})
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			if msg, ok := strings.CutPrefix(err.Error(), "CSFENCED "); ok {
				return backoff.Permanent(a.refused(ErrFenced, msg))
			}
			return err
		}
	}
	return nil
}
