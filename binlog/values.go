package binlog

import (
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// valueConv turns a column's binlog value into what Snapshot reads for it,
// so keys and values do not depend on whether a row came from the snapshot
// or the stream, and gives every column the Go type Change documents:
//   - ENUM and SET arrive as numbers: their names come from the table map
//     (binlog_row_metadata=FULL);
//   - latin1 text arrives in latin1: converted to UTF-8, as the server
//     converts it for Snapshot;
//   - TEXT arrives as []byte, BINARY and VARBINARY as string: text becomes
//     a string, binary a []byte;
//   - MySQL's binary JSON arrives rendered compact: spaced as SELECT
//     prints it (mysqlJSONText);
//   - BINARY(n) arrives without its trailing 0x00 padding, which SELECT
//     returns: padded back to n bytes;
//   - BIT arrives as a signed integer: BIT(64) with the top bit set would
//     read negative, so it becomes unsigned;
//   - TIME(fsp) leaves out a zero fraction, which SELECT prints: added.
type valueConv struct {
	enum   []string // ENUM: value names, index 1 first
	set    []string // SET: member names, bit 0 first
	latin1 bool     // latin1 text, converted to UTF-8
	text   bool     // text that arrives as []byte
	json   bool     // MySQL's binary JSON, rendered by go-mysql
	binary bool     // binary that may arrive as a string
	pad    int      // BINARY(pad): 0x00-padded to pad bytes
	bit    bool     // BIT: unsigned
	// unsigned: the width in bits of an UNSIGNED integer column (8, 16,
	// 24, 32, 64), which go-mysql decoded as signed (see takeSignedness).
	unsigned int
	fsp      int // TIME(fsp), fsp > 0
}

// binaryCollation is the collation id of the binary character set: the
// columns that hold bytes rather than text.
const binaryCollation = 63

// valueConvs returns the conversions a table's columns need (nil: none);
// signedness is e's SignednessBitmap (see takeSignedness). Character sets
// other than latin1 and UTF-8 are passed through as bytes
// (sink.Rules.CheckSchema refuses rules that read them).
func valueConvs(e *replication.TableMapEvent, signedness []byte) map[int]valueConv {
	var conv map[int]valueConv
	add := func(i int, f func(*valueConv)) {
		if conv == nil {
			conv = make(map[int]valueConv)
		}
		c := conv[i]
		f(&c)
		conv[i] = c
	}
	// Collations matter only for binary and latin1 columns; without either
	// (most tables), every text column is UTF-8 and the map, built for
	// every transaction, is skipped.
	var coll map[int]uint64
	if mayNeedCollations(e.DefaultCharset) || mayNeedCollations(e.ColumnCharset) {
		coll = e.CollationMap()
	}
	if len(signedness) > 0 {
		withBits := *e
		withBits.SignednessBitmap = signedness
		for i, u := range withBits.UnsignedMap() {
			if w := intWidth[e.ColumnType[i]]; u && w > 0 {
				add(i, func(c *valueConv) { c.unsigned = w })
			}
		}
	}
	for i, typ := range e.ColumnType {
		meta := e.ColumnMeta[i]
		switch typ {
		case mysql.MYSQL_TYPE_BIT:
			add(i, func(c *valueConv) { c.bit = true })
		case mysql.MYSQL_TYPE_TIME2:
			if meta > 0 {
				add(i, func(c *valueConv) { c.fsp = int(meta) })
			}
		case mysql.MYSQL_TYPE_GEOMETRY, mysql.MYSQL_TYPE_VECTOR:
			add(i, func(c *valueConv) { c.binary = true })
		case mysql.MYSQL_TYPE_JSON:
			add(i, func(c *valueConv) { c.json = true })
		case mysql.MYSQL_TYPE_STRING, mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_BLOB:
			if typ == mysql.MYSQL_TYPE_STRING {
				if real := byte(meta >> 8); real == mysql.MYSQL_TYPE_ENUM || real == mysql.MYSQL_TYPE_SET {
					continue // see below
				}
			}
			switch id, ok := coll[i]; {
			case ok && id == binaryCollation && typ == mysql.MYSQL_TYPE_STRING:
				add(i, func(c *valueConv) { c.binary, c.pad = true, stringLength(meta) })
			case ok && id == binaryCollation:
				add(i, func(c *valueConv) { c.binary = true })
			case isLatin1(id):
				add(i, func(c *valueConv) { c.latin1 = true })
			case typ == mysql.MYSQL_TYPE_BLOB:
				add(i, func(c *valueConv) { c.text = true })
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

// intWidth is the width in bits of each integer column type.
var intWidth = map[byte]int{mysql.MYSQL_TYPE_TINY: 8, mysql.MYSQL_TYPE_SHORT: 16, mysql.MYSQL_TYPE_INT24: 24,
	mysql.MYSQL_TYPE_LONG: 32, mysql.MYSQL_TYPE_LONGLONG: 64}

// mayNeedCollations is a cheap test on the raw charset metadata (collation
// ids mixed with column indexes): false means no column is binary or
// latin1.
func mayNeedCollations(ids []uint64) bool {
	return slices.ContainsFunc(ids, func(id uint64) bool { return id == binaryCollation || isLatin1(id) })
}

// stringLength is the byte length of a CHAR or BINARY column from its
// table map metadata (as go-mysql's RowsEvent.decodeValue reads it).
func stringLength(meta uint16) int {
	if meta < 256 {
		return int(meta)
	}
	b0, b1 := byte(meta>>8), byte(meta)
	if b0&0x30 != 0x30 {
		return int(uint16(b1) | uint16((b0&0x30)^0x30)<<4)
	}
	return int(b1)
}

func (c valueConv) equal(d valueConv) bool {
	return c.latin1 == d.latin1 && c.text == d.text && c.json == d.json && c.binary == d.binary && c.pad == d.pad && c.bit == d.bit &&
		c.unsigned == d.unsigned && c.fsp == d.fsp && slices.Equal(c.enum, d.enum) && slices.Equal(c.set, d.set)
}

func equalConvs(a, b map[int]valueConv) bool {
	if len(a) != len(b) {
		return false
	}
	for i, x := range a {
		y, ok := b[i]
		if !ok || !x.equal(y) {
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
	case int8:
		if c.unsigned > 0 {
			return uint8(x)
		}
	case int16:
		if c.unsigned > 0 {
			return uint16(x)
		}
	case int32:
		switch c.unsigned {
		case 24: // sign-extended from 24 bits
			return uint32(x) & 0xFFFFFF
		case 32:
			return uint32(x)
		}
	case int64:
		switch {
		case c.unsigned > 0:
			return uint64(x)
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
		case c.bit:
			return uint64(x)
		}
	case string:
		switch {
		case c.latin1:
			return latin1ToUTF8(x)
		case c.binary:
			b := make([]byte, max(len(x), c.pad))
			copy(b, x)
			return b
		case c.json:
			return mysqlJSONText(x)
		case c.fsp > 0 && !strings.Contains(x, "."):
			return x + "." + strings.Repeat("0", c.fsp)
		}
	case []byte:
		switch {
		case c.latin1:
			return latin1ToUTF8(string(x))
		case c.text:
			return string(x)
		case c.json:
			return mysqlJSONText(x)
		}
	}
	return v
}

// latin1 collation ids (MySQL and MariaDB, including MariaDB's NOPAD ones).
var latin1Collations = map[uint64]bool{5: true, 8: true, 15: true, 31: true, 47: true, 48: true, 49: true, 94: true,
	1032: true, 1071: true}

func isLatin1(coll uint64) bool { return latin1Collations[coll] }

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
