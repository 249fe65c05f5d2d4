package binlog

import (
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/replication"
)

// valueConv turns a column's binlog value into what the text protocol (and
// so Snapshot) returns for it, so keys and values do not depend on whether
// a row came from the snapshot or the stream. The binlog holds ENUM and SET
// values as numbers and text in the column's character set; the names and
// character sets come from the table map (binlog_row_metadata=FULL).
type valueConv struct {
	enum   []string // ENUM: value names, index 1 first
	set    []string // SET: member names, bit 0 first
	latin1 bool     // latin1 text, converted to UTF-8
}

// valueConvs returns the conversions a table's columns need (nil: none).
// Character sets other than latin1 and UTF-8 are passed through as bytes.
func valueConvs(e *replication.TableMapEvent) map[int]valueConv {
	var conv map[int]valueConv
	add := func(i int, f func(*valueConv)) {
		if conv == nil {
			conv = make(map[int]valueConv)
		}
		c := conv[i]
		f(&c)
		conv[i] = c
	}
	if mayBeLatin1(e.DefaultCharset) || mayBeLatin1(e.ColumnCharset) {
		for i, coll := range e.CollationMap() {
			if isLatin1(coll) {
				add(i, func(c *valueConv) { c.latin1 = true })
			}
		}
	}
	if len(e.EnumStrValue) > 0 || len(e.SetStrValue) > 0 {
		latin1 := map[int]bool{}
		for i, coll := range e.EnumSetCollationMap() {
			latin1[i] = isLatin1(coll)
		}
		names := func(i int, vals []string) []string {
			if !latin1[i] {
				return vals
			}
			out := make([]string, len(vals))
			for j, v := range vals {
				out[j] = latin1ToUTF8(v)
			}
			return out
		}
		for i, vals := range e.EnumStrValueMap() {
			add(i, func(c *valueConv) { c.enum = names(i, vals) })
		}
		for i, vals := range e.SetStrValueMap() {
			add(i, func(c *valueConv) { c.set = names(i, vals) })
		}
	}
	return conv
}

func equalConvs(a, b map[int]valueConv) bool {
	if len(a) != len(b) {
		return false
	}
	for i, x := range a {
		y, ok := b[i]
		if !ok || x.latin1 != y.latin1 || !slices.Equal(x.enum, y.enum) || !slices.Equal(x.set, y.set) {
			return false
		}
	}
	return true
}

// convert rewrites the values of row that need a conversion, in place.
func (t *Table) convert(row []any) {
	for i, c := range t.conv {
		row[i] = c.apply(row[i])
	}
}

func (c valueConv) apply(v any) any {
	switch x := v.(type) {
	case int64:
		switch {
		case c.enum != nil:
			if x >= 1 && x <= int64(len(c.enum)) {
				return c.enum[x-1]
			}
			return "" // index 0: the empty error value
		case c.set != nil:
			var b strings.Builder
			for i, name := range c.set {
				if uint64(x)>>i&1 == 1 {
					if b.Len() > 0 {
						b.WriteByte(',')
					}
					b.WriteString(name)
				}
			}
			return b.String()
		}
	case string:
		if c.latin1 {
			return latin1ToUTF8(x)
		}
	case []byte:
		if c.latin1 {
			return []byte(latin1ToUTF8(string(x)))
		}
	}
	return v
}

// latin1 collation ids (MySQL and MariaDB, including MariaDB's NOPAD ones).
var latin1Collations = map[uint64]bool{5: true, 8: true, 15: true, 31: true, 47: true, 48: true, 49: true, 94: true,
	1032: true, 1071: true}

func isLatin1(coll uint64) bool { return latin1Collations[coll] }

// mayBeLatin1 is a cheap test on the raw charset metadata (collation ids
// mixed with column indexes): false means no column is latin1.
func mayBeLatin1(ids []uint64) bool {
	return slices.ContainsFunc(ids, isLatin1)
}

// cp1252 maps bytes 0x80..0x9F of MySQL's latin1 (which is Windows-1252,
// with the five unassigned bytes mapped to the C1 controls).
var cp1252 = [32]rune{
	0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
	0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
}

func latin1ToUTF8(s string) string {
	i := 0
	for i < len(s) && s[i] < utf8.RuneSelf {
		i++
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, i, len(s)+len(s)/2)
	copy(b, s)
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x80:
			b = append(b, c)
		case c < 0xA0:
			b = utf8.AppendRune(b, cp1252[c-0x80])
		default:
			b = utf8.AppendRune(b, rune(c))
		}
	}
	return string(b)
}
