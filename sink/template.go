package sink

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/cachesync/cachesync/binlog"
)

// Template is a compiled key template: literal text with column references
// in braces, e.g. "goods:{goodsId}". "{{" and "}}" stand for literal braces
// (Redis Cluster hash tags: "item:{{{id}}}:stock" renders "item:{7}:stock").
type Template struct {
	src   string
	parts []part
}

type part struct {
	lit string
	col string // column reference when non-empty
}

// ParseTemplate compiles s. It fails on unbalanced braces, empty column
// names and templates without any column that are also empty.
func ParseTemplate(s string) (*Template, error) {
	if s == "" {
		return nil, fmt.Errorf("empty template")
	}
	t := &Template{src: s}
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			lit.WriteByte('{')
			i++
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexByte(s[i+1:], '}')
			if end < 0 {
				return nil, fmt.Errorf("template %q: unclosed '{' at offset %d", s, i)
			}
			col := strings.TrimSpace(s[i+1 : i+1+end])
			if col == "" || strings.ContainsAny(col, "{") {
				return nil, fmt.Errorf("template %q: bad column reference at offset %d", s, i)
			}
			if lit.Len() > 0 {
				t.parts = append(t.parts, part{lit: lit.String()})
				lit.Reset()
			}
			t.parts = append(t.parts, part{col: col})
			i += end + 1
		case c == '}':
			return nil, fmt.Errorf("template %q: unmatched '}' at offset %d (write '}}' for a literal brace)", s, i)
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, part{lit: lit.String()})
	}
	return t, nil
}

// String returns the template source.
func (t *Template) String() string { return t.src }

// Columns lists the referenced columns.
func (t *Template) Columns() []string {
	var cols []string
	for _, p := range t.parts {
		if p.col != "" {
			cols = append(cols, p.col)
		}
	}
	return cols
}

// bound is a template resolved against one table's columns.
type bound struct {
	parts []boundPart
}

type boundPart struct {
	lit string
	idx int // column index, -1 for literal
}

func (t *Template) bind(tb *binlog.Table) (bound, error) {
	b := bound{parts: make([]boundPart, len(t.parts))}
	for i, p := range t.parts {
		if p.col == "" {
			b.parts[i] = boundPart{lit: p.lit, idx: -1}
			continue
		}
		idx, ok := tb.Column(p.col)
		if !ok {
			return b, fmt.Errorf("template %q: column %q is not in %s (binlog columns: %s)", t.src, p.col, tb.FullName(), strings.Join(tb.Columns, ", "))
		}
		b.parts[i] = boundPart{idx: idx}
	}
	return b, nil
}

// render appends the key for row to buf. ok is false when a referenced
// value is NULL: there is no key to name.
func (b bound) render(buf []byte, row []any) (out []byte, ok bool) {
	for _, p := range b.parts {
		if p.idx < 0 {
			buf = append(buf, p.lit...)
			continue
		}
		v := row[p.idx]
		if v == nil {
			return buf, false
		}
		buf = appendValue(buf, v)
	}
	return buf, true
}

// appendValue formats a binlog row value as text: integers in decimal,
// floats in their shortest exact form, strings and bytes as they are.
func appendValue(buf []byte, v any) []byte {
	switch x := v.(type) {
	case string:
		return append(buf, x...)
	case []byte:
		return append(buf, x...)
	case int64:
		return strconv.AppendInt(buf, x, 10)
	case int32:
		return strconv.AppendInt(buf, int64(x), 10)
	case int16:
		return strconv.AppendInt(buf, int64(x), 10)
	case int8:
		return strconv.AppendInt(buf, int64(x), 10)
	case int:
		return strconv.AppendInt(buf, int64(x), 10)
	case uint64:
		return strconv.AppendUint(buf, x, 10)
	case uint32:
		return strconv.AppendUint(buf, uint64(x), 10)
	case uint16:
		return strconv.AppendUint(buf, uint64(x), 10)
	case uint8:
		return strconv.AppendUint(buf, uint64(x), 10)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return append(buf, "null"...)
		}
		return strconv.AppendFloat(buf, x, 'g', -1, 64)
	case float32:
		return strconv.AppendFloat(buf, float64(x), 'g', -1, 32)
	case fmt.Stringer:
		return append(buf, x.String()...)
	default:
		return fmt.Append(buf, x)
	}
}

// Match reports whether key is one this template can render: its literals
// in order, any text (possibly empty) where it names a column. Values may
// contain the literals, so "goods:{id}" matches "goods:json:1" too.
func (t *Template) Match(key string) bool { return matchParts(t.parts, key) }

func matchParts(parts []part, s string) bool {
	if len(parts) == 0 {
		return s == ""
	}
	if p := parts[0]; p.col == "" {
		rest, ok := strings.CutPrefix(s, p.lit)
		return ok && matchParts(parts[1:], rest)
	}
	if len(parts) == 1 {
		return true
	}
	for i := 0; i <= len(s); i++ {
		if matchParts(parts[1:], s[i:]) {
			return true
		}
	}
	return false
}

// Glob returns the SCAN MATCH pattern of every key the template can
// render: its literals escaped, "*" for each column.
func (t *Template) Glob() string {
	var b strings.Builder
	star := false
	for _, p := range t.parts {
		if p.col != "" {
			if !star {
				b.WriteByte('*')
			}
			star = true
			continue
		}
		star = false
		appendGlobEscaped(&b, p.lit)
	}
	return b.String()
}
