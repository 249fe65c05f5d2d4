package sink

import (
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
)

func lit(s string) part { return part{lit: s} }
func col(s string) part { return part{col: s} }

func TestParseTemplate(t *testing.T) {
	good := []struct {
		in    string
		parts []part
		cols  []string
	}{
		{"goods:{id}", []part{lit("goods:"), col("id")}, []string{"id"}},
		{"{id}", []part{col("id")}, []string{"id"}},
		{"plain", []part{lit("plain")}, nil},
		{"a:{ id }:b", []part{lit("a:"), col("id"), lit(":b")}, []string{"id"}},
		{"{a}{b}", []part{col("a"), col("b")}, []string{"a", "b"}},
		{"{a}:{b}:{a}", []part{col("a"), lit(":"), col("b"), lit(":"), col("a")}, []string{"a", "b", "a"}},
		// Redis Cluster hash tags: "{{" and "}}" are literal braces.
		{"item:{{{id}}}:stock", []part{lit("item:{"), col("id"), lit("}:stock")}, []string{"id"}},
		{"{{literal}}", []part{lit("{literal}")}, nil},
		{"{{", []part{lit("{")}, nil},
		{"}}", []part{lit("}")}, nil},
		{"x{{}}y", []part{lit("x{}y")}, nil},
		{"{{{a}", []part{lit("{"), col("a")}, []string{"a"}},
		{"{a}}}", []part{col("a"), lit("}")}, []string{"a"}},
		{"k:{goods id}", []part{lit("k:"), col("goods id")}, []string{"goods id"}},
		{"ключ:{id}", []part{lit("ключ:"), col("id")}, []string{"id"}},
	}
	for _, tc := range good {
		t.Run("good/"+tc.in, func(t *testing.T) {
			tm, err := ParseTemplate(tc.in)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(tm.parts, tc.parts) {
				t.Errorf("parts = %#v, want %#v", tm.parts, tc.parts)
			}
			if !reflect.DeepEqual(tm.Columns(), tc.cols) {
				t.Errorf("Columns() = %q, want %q", tm.Columns(), tc.cols)
			}
			if tm.String() != tc.in {
				t.Errorf("String() = %q, want the source %q", tm.String(), tc.in)
			}
		})
	}

	bad := []struct{ in, err string }{
		{"", "empty template"},
		{"goods:{id", `unclosed '{' at offset 6`},
		{"{", `unclosed '{' at offset 0`},
		{"a{{b{c", `unclosed '{' at offset 4`},
		{"goods:{}", "bad column reference at offset 6"},
		{"goods:{ }", "bad column reference at offset 6"},
		{"{a{b}", "bad column reference at offset 0"},
		{"a}b", `unmatched '}' at offset 1`},
		{"}", `unmatched '}' at offset 0`},
		{"{id}}", `unmatched '}' at offset 4`},
		{"{{id}", `unmatched '}' at offset 4`},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.in, func(t *testing.T) {
			tm, err := ParseTemplate(tc.in)
			if err == nil {
				t.Fatalf("ParseTemplate(%q) = %#v, want an error containing %q", tc.in, tm.parts, tc.err)
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseTemplate(%q) error %q, want it to contain %q", tc.in, err, tc.err)
			}
			if tc.in != "" && !strings.Contains(err.Error(), tc.in) {
				t.Errorf("ParseTemplate(%q) error %q does not quote the template", tc.in, err)
			}
		})
	}
}

type stringer struct{}

func (stringer) String() string { return "str!" }

func TestRenderValueTypes(t *testing.T) {
	cases := []struct {
		name string
		v    any
		want string
	}{
		{"int8", int8(-128), "-128"},
		{"int16", int16(-32768), "-32768"},
		{"int32", int32(-2147483648), "-2147483648"},
		{"int64 min", int64(math.MinInt64), "-9223372036854775808"},
		{"int64 max", int64(math.MaxInt64), "9223372036854775807"},
		{"int", int(42), "42"},
		{"uint8", uint8(255), "255"},
		{"uint16", uint16(65535), "65535"},
		{"uint32", uint32(4294967295), "4294967295"},
		{"uint64 max", uint64(math.MaxUint64), "18446744073709551615"},
		{"float32", float32(1.5), "1.5"},
		{"float32 shortest", float32(0.1), "0.1"},
		{"float64", float64(0.1), "0.1"},
		{"float64 integral", float64(3), "3"},
		{"float64 negative", float64(-2.25), "-2.25"},
		{"float64 large", float64(1e21), "1e+21"},
		{"string", "héllo wörld", "héllo wörld"},
		{"decimal string", "379.00", "379.00"},
		{"empty string", "", ""},
		{"bytes", []byte{'a', 0, 0xff}, "a\x00\xff"},
		{"stringer", stringer{}, "str!"},
		{"time (stringer)", time.Duration(1500) * time.Millisecond, "1.5s"},
		{"other", true, "true"},
	}
	tb := binlog.NewTable("s", "t", []string{"ID", "v"}, nil)
	tm, err := ParseTemplate("k:{id}:{V}:end")
	if err != nil {
		t.Fatal(err)
	}
	b, err := tm.bind(tb)
	if err != nil {
		t.Fatalf("bind (case-insensitive column names): %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(appendValue([]byte("pre|"), tc.v)); got != "pre|"+tc.want {
				t.Errorf("appendValue(%T %v) = %q, want %q", tc.v, tc.v, got, "pre|"+tc.want)
			}
			out, ok := b.render(nil, []any{int64(7), tc.v})
			if !ok {
				t.Fatalf("render: ok = false for a non-NULL value")
			}
			if want := "k:7:" + tc.want + ":end"; string(out) != want {
				t.Errorf("render = %q, want %q", out, want)
			}
		})
	}

	t.Run("NULL", func(t *testing.T) {
		for _, row := range [][]any{{nil, "x"}, {int64(1), nil}, {nil, nil}} {
			if out, ok := b.render(nil, row); ok {
				t.Errorf("render(%v) = %q, ok; want not ok (no key for a NULL column)", row, out)
			}
		}
	})
	t.Run("literal only", func(t *testing.T) {
		lt, _ := ParseTemplate("{{all}}")
		lb, err := lt.bind(tb)
		if err != nil {
			t.Fatal(err)
		}
		if out, ok := lb.render(nil, []any{nil, nil}); !ok || string(out) != "{all}" {
			t.Errorf("render = %q, %v; want %q, true", out, ok, "{all}")
		}
	})
	t.Run("missing column", func(t *testing.T) {
		mt, _ := ParseTemplate("k:{nope}")
		_, err := mt.bind(tb)
		if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "s.t") {
			t.Errorf("bind error %v, want one naming column \"nope\" and table s.t", err)
		}
	})
}

// escapeLiteral writes s as template text that means s literally.
func escapeLiteral(s string) string {
	return strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
}

// canonical writes a parsed template back as source text.
func canonical(parts []part) string {
	var b strings.Builder
	for _, p := range parts {
		if p.col != "" {
			b.WriteString("{" + p.col + "}")
		} else {
			b.WriteString(escapeLiteral(p.lit))
		}
	}
	return b.String()
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{"goods:{id}", "item:{{{id}}}:stock", "{{", "}}", "{a}{b}", "a}b", "{", "{ x }",
		"{a{b}", "{{id}", "{id}}}", "\xff{\xfe}", "k:{id}:{{x}}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tm, err := ParseTemplate(s)
		if err == nil {
			// Round trip: writing the parsed template back and parsing
			// it again gives the same template.
			again, err := ParseTemplate(canonical(tm.parts))
			if err != nil {
				t.Fatalf("canonical form %q of %q does not parse: %v", canonical(tm.parts), s, err)
			}
			if !reflect.DeepEqual(again.parts, tm.parts) {
				t.Fatalf("round trip of %q via %q: parts %#v, want %#v", s, canonical(tm.parts), again.parts, tm.parts)
			}
			// Parts are never empty, literals never adjacent, column names
			// trimmed and free of braces.
			for i, p := range tm.parts {
				switch {
				case p.col == "" && p.lit == "":
					t.Fatalf("%q: empty part %d", s, i)
				case p.col == "" && i > 0 && tm.parts[i-1].col == "":
					t.Fatalf("%q: adjacent literal parts %d and %d", s, i-1, i)
				case p.col != "" && (strings.TrimSpace(p.col) != p.col || strings.ContainsAny(p.col, "{}")):
					t.Fatalf("%q: bad column name %q", s, p.col)
				}
			}
			// Rendering with every column bound to a value of its own
			// (column names are case-insensitive).
			var cols []string
			idx := map[string]int{}
			for _, c := range tm.Columns() {
				if _, ok := idx[strings.ToLower(c)]; !ok {
					idx[strings.ToLower(c)] = len(cols)
					cols = append(cols, c)
				}
			}
			tb := binlog.NewTable("s", "t", cols, nil)
			b, err := tm.bind(tb)
			if err != nil {
				t.Fatalf("bind %q to its own columns: %v", s, err)
			}
			row := make([]any, len(cols))
			for i := range cols {
				row[i] = "<" + strconv.Itoa(i) + ">"
			}
			var want strings.Builder
			for _, p := range tm.parts {
				if p.col != "" {
					want.WriteString(row[idx[strings.ToLower(p.col)]].(string))
				} else {
					want.WriteString(p.lit)
				}
			}
			if out, ok := b.render(nil, row); !ok || string(out) != want.String() {
				t.Fatalf("render %q = %q, %v; want %q", s, out, ok, want.String())
			}
		}
		// Any text, escaped, is a template that renders as that text.
		if s != "" {
			lt, err := ParseTemplate(escapeLiteral(s))
			if err != nil {
				t.Fatalf("escaped literal %q does not parse: %v", escapeLiteral(s), err)
			}
			if len(lt.parts) != 1 || lt.parts[0] != lit(s) {
				t.Fatalf("escaped literal %q parsed as %#v, want one literal %q", escapeLiteral(s), lt.parts, s)
			}
		}
	})
}
