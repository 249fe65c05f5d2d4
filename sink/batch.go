package sink

import (
	"encoding/base64"
	"strconv"
	"unicode/utf8"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
)

// header is the number of fixed ARGV slots before the ops (see apply.lua).
const header = 13

// batch accumulates the script arguments for consecutive transactions.
type batch struct {
	ks      keyspace.Keyspace
	fence   Fence
	keys    []string
	args    []any
	pub     map[string]struct{}
	pubList []string
	txns    []*binlog.Txn
	cp      *binlog.Txn // set by finish: the transaction the checkpoint names, nil for none
	rows    int
	bytes   int    // estimated bytes of the transactions' rows
	buf     []byte // scratch for rendering
	buf2    []byte
	rules   []*boundRule // rules that counted changes in this batch
	// run is the open run op: the last op appended, if it is a D, M or Y
	// that may take more keys (see runOp); runN its count's index in args.
	run  string
	runN int
	// last holds each key's last unversioned write of the batch, emitted
	// by finish (see write).
	last      map[string]write
	lastOrder []string
	// direct: set by finish when the batch's last writes go to Redis as
	// plain commands beside the script (see Applier.applyDirect): mset
	// holds MSET's arguments, dels the keys to delete, hsets the hashes.
	direct bool
	mset   []any
	dels   []string
	hsets  []hashWrite
	// On a Redis Cluster (see Applier.applySlots), the batch's ops on keys
	// outside the slot of the source's own keys (ctlSlot) go in one
	// sub-batch per slot; the batch itself holds the rest, the checkpoint
	// and the message. Nil slots: a standalone Redis, everything here.
	slots   map[int]*batch
	ctlSlot int
	spare   []*batch // sub-batches of earlier batches, for reuse
	slot    int      // of a sub-batch: its slot
}

// hashWrite is an unversioned hash write sent beside the script.
type hashWrite struct {
	key    string
	fields []any
}

// directMin is the fewest last writes for which a batch sends them beside
// the script: a script copies every argument twice more than a plain
// command (into Lua, and back), which costs Redis about as much as the
// write itself, while the direct path costs a round trip (the WATCH).
const directMin = 16

// write is an unversioned write: each replaces its key whole, so of a
// run of them on one key only the last matters.
type write struct {
	kind   byte   // 'M' SET, 'Y' DEL, 'h' DEL and HSET
	val    string // 'M'
	fields []any  // 'h'
}

// maxRun caps the keys of one run op: Lua's unpack takes at most 8000
// values, and an MSET of n keys unpacks 2n.
const maxRun = 1000

func newBatch(ks keyspace.Keyspace, fence Fence) *batch {
	if fence.Key == "" { // unfenced: KEYS[4] is never read
		fence.Key = ks.Checkpoint()
	}
	b := &batch{ks: ks, fence: fence, pub: make(map[string]struct{}), last: make(map[string]write), slot: -1}
	if ks.Cluster {
		b.slots = make(map[int]*batch)
		b.ctlSlot = keyspace.Slot(ks.Checkpoint())
	}
	b.reset()
	return b
}

// at is the batch that takes the ops on key k: b itself, or on a cluster
// the sub-batch of k's slot.
func (b *batch) at(k string) *batch {
	if b.slots == nil {
		return b
	}
	s := keyspace.Slot(k)
	if s == b.ctlSlot {
		return b
	}
	sub := b.slots[s]
	if sub == nil {
		if n := len(b.spare); n > 0 {
			sub, b.spare = b.spare[n-1], b.spare[:n-1]
		} else {
			sub = &batch{ks: b.ks, last: make(map[string]write)}
		}
		sub.slot = s
		sub.reset()
		b.slots[s] = sub
	}
	return sub
}

func (b *batch) reset() {
	if b.slot >= 0 { // a sub-batch: KEYS[1..4] of slot.lua
		rec := b.ks.SlotRecord(b.slot)
		b.keys = append(b.keys[:0], rec, rec, b.ks.SlotJournal(b.slot), rec)
	} else {
		b.keys = append(b.keys[:0], b.ks.Checkpoint(), b.ks.Seq(), b.ks.Snapshot(), b.fence.Key)
	}
	for _, sub := range b.slots {
		b.spare = append(b.spare, sub)
	}
	clear(b.slots)
	clear(b.pub)
	b.pubList = b.pubList[:0]
	b.args = append(b.args[:0], make([]any, header)...)
	b.txns = b.txns[:0]
	b.rows, b.bytes = 0, 0
	for _, br := range b.rules { // counts of a batch that was not applied
		br.applied = 0
	}
	b.rules = b.rules[:0]
	b.run = ""
	clear(b.last)
	b.lastOrder = b.lastOrder[:0]
	b.direct = false
	b.mset, b.dels, b.hsets = b.mset[:0], b.dels[:0], b.hsets[:0]
}

func (b *batch) announce(k string) {
	if _, ok := b.pub[k]; !ok {
		b.pub[k] = struct{}{}
		b.pubList = append(b.pubList, k)
	}
}

// runOp appends n keys to the run op kind ("D", "M" or "Y"), with val
// (M's values): to the trailing op when it is one of that kind with room,
// else to a new one. A run is one command in the script for many rows.
func (b *batch) runOp(kind string, n int, val ...any) {
	if b.run != kind || b.args[b.runN].(int)+n > maxRun {
		b.args = append(b.args, kind, 0)
		b.run, b.runN = kind, len(b.args)-1
	}
	b.args[b.runN] = b.args[b.runN].(int) + n
	b.args = append(b.args, val...)
}

// op ends the open run: ops that follow are not part of it.
func (b *batch) op(args ...any) {
	b.args = append(b.args, args...)
	b.run = ""
}

// put records w as k's last unversioned write. Its place in the script is
// at the end of the batch (see finish), after every other op: the script
// runs whole, so only the order of the ops on one key matters, and an op
// of another kind on k first takes k's pending write out (settle).
func (b *batch) put(k string, w write) {
	if _, ok := b.last[k]; !ok {
		b.lastOrder = append(b.lastOrder, k)
	}
	b.last[k] = w
}

// settle emits k's pending unversioned write, if any, before an op of
// another kind on k.
func (b *batch) settle(k string) {
	w, ok := b.last[k]
	if !ok {
		return
	}
	delete(b.last, k) // its lastOrder entry is skipped by flushWrites
	b.emit(k, w)
}

func (b *batch) emit(k string, w write) {
	b.keys = append(b.keys, k)
	switch w.kind {
	case 'M':
		b.runOp("M", 1, w.val)
	case 'Y':
		b.runOp("Y", 1)
	default:
		b.op("h", len(w.fields)/2)
		b.args = append(b.args, w.fields...)
	}
}

// flushWrites emits the pending unversioned writes: SETs in MSET runs,
// DELs in DEL runs, which cost Redis one command per thousand rows; with
// direct, into mset, dels and hsets instead of the script's ops.
func (b *batch) flushWrites(direct bool) {
	b.direct = direct
	for _, kind := range []byte{'M', 'Y', 'h'} {
		for _, k := range b.lastOrder {
			w, ok := b.last[k]
			if !ok || w.kind != kind {
				continue
			}
			delete(b.last, k) // k may be listed twice (see settle)
			switch {
			case !direct:
				b.emit(k, w)
			case kind == 'M':
				b.mset = append(b.mset, k, w.val)
			case kind == 'Y':
				b.dels = append(b.dels, k)
			default:
				b.hsets = append(b.hsets, hashWrite{k, w.fields})
			}
		}
	}
	b.lastOrder = b.lastOrder[:0]
}

// The row ops below go to the batch of their key's slot (at); the key is
// announced in the batch's one message.

// invalidate deletes k and its read lease (see package cache) as
// unversioned last writes, so that a batch of many goes beside the script
// as one plain DEL (Applier.applyDirect) instead of through Lua.
func (b *batch) invalidate(k string) {
	b.announce(k)
	s := b.at(k)
	s.put(k, write{kind: 'Y'})
	s.put(b.ks.Lease(k), write{kind: 'Y'})
}

// set stores val at k; a nil ver stores it unversioned (see
// RuleConfig.Versioned).
func (b *batch) set(k string, ver any, val string) {
	b.announce(k)
	s := b.at(k)
	if ver == nil {
		s.put(k, write{kind: 'M', val: val})
		return
	}
	s.settle(k)
	s.op("S", ver, val)
	s.keys = append(s.keys, k, b.ks.Version(k))
}

// del deletes k; a nil ver leaves no tombstone.
func (b *batch) del(k string, ver any) {
	b.announce(k)
	s := b.at(k)
	if ver == nil {
		s.put(k, write{kind: 'Y'})
		return
	}
	s.settle(k)
	s.op("X", ver)
	s.keys = append(s.keys, k, b.ks.Version(k))
}

// hset stores the hash fields at k; a nil ver stores it unversioned.
func (b *batch) hset(k string, ver any, fields []any) {
	b.announce(k)
	s := b.at(k)
	if ver == nil {
		s.put(k, write{kind: 'h', fields: fields})
		return
	}
	s.settle(k)
	s.op("H", ver, strconv.Itoa(len(fields)/2))
	s.args = append(s.args, fields...)
	s.keys = append(s.keys, k, b.ks.Version(k))
}

// member adds or removes e: "A"/"R" on a set (or sorted set, for "R"),
// "HA"/"HR" on a hash.
func (b *batch) member(add bool, e entry) {
	b.announce(e.key)
	s := b.at(e.key)
	s.settle(e.key)
	switch {
	case e.hash && add:
		s.op("HA", e.m, e.v)
	case e.hash:
		s.op("HR", e.m, e.v)
	case add:
		s.op("A", e.m)
	default:
		s.op("R", e.m)
	}
	s.keys = append(s.keys, e.key)
}

// finish fills the header. guard says what must already exist, expect the
// checkpoint version that must be stored (with guard "1"), lastSeq the last
// seq this writer published (0: none); see apply.lua.
func (b *batch) finish(guard, expect string, lastSeq int64, channel string, tombstoneMS int64) {
	// Only with a checkpoint: before one, the script journals every key.
	// Not on a cluster: the writes beside the script are in its slot only.
	b.flushWrites(guard == guardCheckpoint && len(b.last) >= directMin && b.slots == nil)
	// The checkpoint is that of the last complete transaction: a piece of
	// a split one is never a resume point.
	b.cp = nil
	for i := len(b.txns) - 1; i >= 0 && b.cp == nil; i-- {
		if !b.txns[i].Partial {
			b.cp = b.txns[i]
		}
	}
	last := b.cp
	flag := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	b.args[0] = guard
	b.args[1] = flag(last != nil)
	b.args[2], b.args[3], b.args[4], b.args[5], b.args[6] = "", "", "", "", ""
	if last != nil {
		ver, _ := last.Pos.Version() // checked when the transaction was added
		b.args[2] = last.Pos.File
		b.args[3] = strconv.FormatUint(uint64(last.Pos.Pos), 10)
		b.args[4] = strconv.FormatUint(ver, 10)
		b.args[5] = last.GTID
		b.args[6] = strconv.FormatInt(last.Commit.UnixMicro(), 10)
	}
	b.args[7] = strconv.FormatInt(tombstoneMS, 10)
	b.args[8] = channel
	b.args[9] = ""
	b.args[10] = expect
	b.args[11] = b.fence.Value
	b.args[12] = ""
	if lastSeq > 0 {
		b.args[12] = strconv.FormatInt(lastSeq, 10)
	}
	if len(b.pubList) > 0 {
		b.buf = appendKeys(b.buf[:0], b.pubList)
		b.args[9] = string(b.buf)
	}
}

// markSlots adds to the batch's own script the op that records slots
// in the bitmap of written slots (keyspace.WrittenSlots).
func (b *batch) markSlots(slots []int) {
	if len(slots) == 0 {
		return
	}
	b.op("B", len(slots))
	for _, s := range slots {
		b.args = append(b.args, s)
	}
	b.keys = append(b.keys, b.ks.WrittenSlots())
}

// finishSlots fills the headers of the sub-batches (see slot.lua) after
// finish: token is the writer's fencing token ("0" for none), recorded(s)
// what it last recorded in slot s ("" for nothing).
func (b *batch) finishSlots(token string, recorded func(slot int) string) {
	for slot, sub := range b.slots {
		sub.flushWrites(false)
		copy(sub.args[:8], b.args[:8])
		if sub.args[0] != guardCheckpoint {
			sub.args[0] = guardJournal
		}
		sub.args[8] = token
		sub.args[9] = recorded(slot)
		sub.args[10], sub.args[11], sub.args[12] = "", "", ""
	}
}

// appendKeys appends the keys fields of an invalidation message (see
// Applier): "keys":[...] with the keys that are UTF-8, and, only if some
// are not, "keys_b64":[...] with those in standard base64: a JSON string
// holds text only, and a key must reach subscribers exactly.
func appendKeys(buf []byte, keys []string) []byte {
	buf = append(buf, `"keys":[`...)
	n := 0
	for _, k := range keys {
		if utf8.ValidString(k) {
			if n > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, k)
			n++
		}
	}
	buf = append(buf, ']')
	if n == len(keys) {
		return buf
	}
	buf = append(buf, `,"keys_b64":[`...)
	n = 0
	for _, k := range keys {
		if !utf8.ValidString(k) {
			if n > 0 {
				buf = append(buf, ',')
			}
			buf = appendKeyB64(buf, k)
			n++
		}
	}
	return append(buf, ']')
}

// appendKeyB64 appends k as a JSON string in standard base64.
func appendKeyB64(buf []byte, k string) []byte {
	buf = append(buf, '"')
	buf = base64.StdEncoding.AppendEncode(buf, []byte(k))
	return append(buf, '"')
}

// cpVersion is the checkpoint version finish put in the header.
func (b *batch) cpVersion() string { return b.args[4].(string) }

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD: callers pass text, or use base64 for bytes (appendKeys).
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c == '\n':
				buf = append(buf, '\\', 'n')
			case c == '\r':
				buf = append(buf, '\\', 'r')
			case c == '\t':
				buf = append(buf, '\\', 't')
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}
