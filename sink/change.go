package sink

import (
	"encoding/base64"
	"math"
	"strconv"

	"github.com/cachesync/cachesync/binlog"
)

// add turns one row change into ops for rule br at version ver (nil for a
// rule without versions). It returns
// how many keys could not be named because a key column was NULL.
func (b *batch) add(br *boundRule, ch *binlog.Change, ver any) (skipped int) {
	br.applied++
	switch br.kind {
	case KindInvalidate:
		for _, t := range br.keys {
			before, okB := b.render(t, ch.Before)
			after, okA := b.render(t, ch.After)
			if okB {
				b.invalidate(before)
			}
			if okA && (!okB || after != before) {
				b.invalidate(after)
			}
			skipped += missing(ch.Before, okB) + missing(ch.After, okA)
		}
	case KindRewrite, KindMirror:
		before, okB := b.render(br.key, ch.Before)
		after, okA := b.render(br.key, ch.After)
		skipped += missing(ch.Before, okB) + missing(ch.After, okA)
		if okB && (!okA || before != after) {
			b.del(before, ver)
		}
		if !okA {
			return skipped
		}
		switch {
		case br.kind == KindMirror && ch.After[br.cols[0]] == nil:
			b.del(after, ver)
		case br.kind == KindMirror:
			b.set(after, ver, string(appendValue(b.buf2[:0], ch.After[br.cols[0]])))
		case br.hash:
			b.hset(after, ver, br.fields(ch.After))
		default:
			b.buf2 = br.appendJSON(b.buf2[:0], ch.After)
			b.set(after, ver, string(b.buf2))
		}
	case KindMember:
		if br.remove { // the after-image alone decides; a delete does nothing
			if !br.matches(ch.After, b.buf2) {
				return skipped
			}
			e, ok := b.entry(br, ch.After)
			if !ok {
				return skipped + 1
			}
			b.member(false, e)
			return skipped
		}
		var eB, eA entry
		inB := br.matches(ch.Before, b.buf2)
		inA := br.matches(ch.After, b.buf2)
		if inB {
			if eB, inB = b.entry(br, ch.Before); !inB {
				skipped++
			}
		}
		if inA {
			if eA, inA = b.entry(br, ch.After); !inA {
				skipped++
			}
		}
		// A changed value is removed (if still current) and set again: the
		// hash ends with the after-image's value.
		if inB && (!inA || eA != eB) {
			b.member(false, eB)
		}
		if inA && (!inB || eA != eB) {
			b.member(true, eA)
		}
	}
	return skipped
}

// render names the key of template t for row; ok is false for a nil row or
// a NULL key column.
func (b *batch) render(t bound, row []any) (string, bool) {
	if row == nil {
		return "", false
	}
	out, ok := t.render(b.buf[:0], row)
	b.buf = out
	if !ok {
		return "", false
	}
	return string(out), true
}

// entry is what a member rule keeps for one row: member m of key, with
// value v when the key is a hash.
type entry struct {
	key, m, v string
	hash      bool
}

// entry renders the rule's entry for row; ok is false when a column of
// the key, the member or the value is NULL.
func (b *batch) entry(br *boundRule, row []any) (e entry, ok bool) {
	var ok1, ok2 bool
	e.key, ok1 = b.render(br.key, row)
	e.m, ok2 = b.render(br.member, row)
	ok = ok1 && ok2
	if br.rule.value != nil {
		e.hash = true
		var ok3 bool
		e.v, ok3 = b.render(br.value, row)
		ok = ok && ok3
	}
	return e, ok
}

func missing(row []any, ok bool) int {
	if row != nil && !ok {
		return 1
	}
	return 0
}

// fields returns the HSET arguments for row; NULL columns are left out.
func (br *boundRule) fields(row []any) []any {
	f := make([]any, 0, 2*len(br.cols))
	for j, i := range br.cols {
		if row[i] == nil {
			continue
		}
		f = append(f, string(br.names[j]), string(appendValue(nil, row[i])))
	}
	return f
}

// appendJSON renders the rule's columns of row as a JSON object, in column
// order: numbers (and DECIMALs) unquoted, text quoted, binary values
// ([]byte) as a base64 string, NULL as null (see "Value encoding" in the
// README).
func (br *boundRule) appendJSON(buf []byte, row []any) []byte {
	buf = append(buf, '{')
	for j, i := range br.cols {
		if j > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, string(br.names[j]))
		buf = append(buf, ':')
		buf = appendJSONValue(buf, row[i], br.decimal[i])
	}
	return append(buf, '}')
}

func appendJSONValue(buf []byte, v any, decimal bool) []byte {
	switch x := v.(type) {
	case nil:
		return append(buf, "null"...)
	case string:
		if decimal {
			return append(buf, x...)
		}
		return appendJSONString(buf, x)
	case []byte: // binary: JSON strings hold text only
		buf = append(buf, '"')
		buf = base64.StdEncoding.AppendEncode(buf, x)
		return append(buf, '"')
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return append(buf, "null"...)
		}
		return strconv.AppendFloat(buf, x, 'g', -1, 64)
	case float32:
		if math.IsInf(float64(x), 0) || math.IsNaN(float64(x)) {
			return append(buf, "null"...)
		}
		return strconv.AppendFloat(buf, float64(x), 'g', -1, 32)
	case int64, int32, int16, int8, int, uint64, uint32, uint16, uint8:
		return appendValue(buf, x)
	default:
		return appendJSONString(buf, string(appendValue(nil, x)))
	}
}
