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
}

func newBatch(ks keyspace.Keyspace, fence Fence) *batch {
	if fence.Key == "" { // unfenced: KEYS[4] is never read
		fence.Key = ks.Checkpoint()
	}
	b := &batch{ks: ks, fence: fence, pub: make(map[string]struct{})}
	b.reset()
	return b
}

func (b *batch) reset() {
	b.keys = append(b.keys[:0], b.ks.Checkpoint(), b.ks.Seq(), b.ks.Snapshot(), b.fence.Key)
	clear(b.pub)
	b.pubList = b.pubList[:0]
	b.args = append(b.args[:0], make([]any, header)...)
	b.txns = b.txns[:0]
	b.rows, b.bytes = 0, 0
	for _, br := range b.rules { // counts of a batch that was not applied
		br.applied = 0
	}
	b.rules = b.rules[:0]
}

func (b *batch) announce(k string) {
	if _, ok := b.pub[k]; !ok {
		b.pub[k] = struct{}{}
		b.pubList = append(b.pubList, k)
	}
}

func (b *batch) invalidate(k string) {
	b.args = append(b.args, "D")
	b.keys = append(b.keys, k, b.ks.Lease(k))
	b.announce(k)
}

func (b *batch) set(k string, ver any, val string) {
	b.args = append(b.args, "S", ver, val)
	b.keys = append(b.keys, k, b.ks.Version(k))
	b.announce(k)
}

func (b *batch) del(k string, ver any) {
	b.args = append(b.args, "X", ver)
	b.keys = append(b.keys, k, b.ks.Version(k))
	b.announce(k)
}

func (b *batch) hset(k string, ver any, fields []any) {
	b.args = append(b.args, "H", ver, strconv.Itoa(len(fields)/2))
	b.keys = append(b.keys, k, b.ks.Version(k))
	b.args = append(b.args, fields...)
	b.announce(k)
}

// member adds or removes e: "A"/"R" on a set (or sorted set, for "R"),
// "HA"/"HR" on a hash.
func (b *batch) member(add bool, e entry) {
	switch {
	case e.hash && add:
		b.args = append(b.args, "HA", e.m, e.v)
	case e.hash:
		b.args = append(b.args, "HR", e.m, e.v)
	case add:
		b.args = append(b.args, "A", e.m)
	default:
		b.args = append(b.args, "R", e.m)
	}
	b.keys = append(b.keys, e.key)
	b.announce(e.key)
}

// finish fills the header. guard says what must already exist, expect the
// checkpoint version that must be stored (with guard "1"), lastSeq the last
// seq this writer published (0: none); see apply.lua.
func (b *batch) finish(guard, expect string, lastSeq int64, channel string, tombstoneMS int64) {
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
