package sink

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"

	"github.com/cachesync/cachesync/binlog"
)

func TestAppendJSONString(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`q"b\s`, `"q\"b\\s"`},
		{"nl\ncr\rtab\t", `"nl\ncr\rtab\t"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"\x7f", "\"\x7f\""},
		{"<&>", `"<&>"`},
		{"héllo €𝄞", `"héllo €𝄞"`},
		{"bad\xffbyte", `"bad\ufffdbyte"`},
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`}, // a surrogate half is not UTF-8
		{"trunc\xe2\x82", `"trunc\ufffd\ufffd"`},
		{"\u2028\u2029", "\"\u2028\u2029\""},
	}
	for _, tc := range cases {
		got := string(appendJSONString([]byte("x"), tc.in))
		if got != "x"+tc.want {
			t.Errorf("appendJSONString(%q) = %s, want %s", tc.in, got[1:], tc.want)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\\", "\x00\n\t", "\xff", "é", "\xed\xa0\x80", "𝄞\xf0\x9d", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString(nil, s)
		if !json.Valid(out) {
			t.Fatalf("appendJSONString(%q) = %s: not valid JSON", s, out)
		}
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("appendJSONString(%q) = %s: %v", s, out, err)
		}
		// Each byte of an invalid sequence becomes one U+FFFD, as in
		// a []rune conversion.
		if want := string([]rune(s)); back != want {
			t.Fatalf("appendJSONString(%q) decodes to %q, want %q", s, back, want)
		}
	})
}

func TestRowJSONAndHash(t *testing.T) {
	tb := binlog.NewTable("s", "t",
		[]string{"id", "price", "name", "blob", "note", "i8", "u64", "f32", "f64", "nan", "inf", "neg"},
		[]bool{false, true, false, false, false, false, false, false, false, false, false, false})
	rs, err := CompileRules([]RuleConfig{
		{Table: "s.t", Kind: KindRewrite, Key: "j:{id}"},
		{Table: "s.t", Kind: KindRewrite, Key: "h:{id}", Format: "hash", Columns: []string{"ID", "price", "name", "note", "u64"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	j, err := rs.byTable["s.t"][0].bind(tb)
	if err != nil {
		t.Fatal(err)
	}
	h, err := rs.byTable["s.t"][1].bind(tb)
	if err != nil {
		t.Fatal(err)
	}
	row := []any{int32(7), "379.00", "a \"b\"\n", []byte("raw\xff"), nil, int8(-3), uint64(math.MaxUint64),
		float32(0.1), 2.5, math.NaN(), math.Inf(1), int64(-9)}
	got := string(j.appendJSON(nil, row))
	want := `{"id":7,"price":379.00,"name":"a \"b\"\n","blob":"cmF3/w==","note":null,"i8":-3,` +
		`"u64":18446744073709551615,"f32":0.1,"f64":2.5,"nan":null,"inf":null,"neg":-9}`
	if got != want {
		t.Errorf("appendJSON:\n got %s\nwant %s", got, want)
	}
	if !json.Valid([]byte(got)) {
		t.Errorf("appendJSON output is not valid JSON: %s", got)
	}

	// Hash: the configured columns (named as the binlog names them), NULLs left out.
	if got, want := h.fields(row), []any{"id", "7", "price", "379.00", "name", "a \"b\"\n", "u64", "18446744073709551615"}; !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %q, want %q", got, want)
	}
}

func TestConditionMatches(t *testing.T) {
	tb := binlog.NewTable("s", "t", []string{"id", "status", "n"}, nil)
	rs, err := CompileRules([]RuleConfig{
		{Table: "s.t", Kind: KindMember, Key: "a", Member: "{id}", When: &Condition{Column: "status", Equals: "on"}},
		{Table: "s.t", Kind: KindMember, Key: "b", Member: "{id}", When: &Condition{Column: "n", In: []string{"1", "2"}}},
		{Table: "s.t", Kind: KindMember, Key: "c", Member: "{id}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var brs []*boundRule
	for _, r := range rs.byTable["s.t"] {
		br, err := r.bind(tb)
		if err != nil {
			t.Fatal(err)
		}
		brs = append(brs, br)
	}
	cases := []struct {
		row  []any
		want [3]bool
	}{
		{nil, [3]bool{false, false, false}},
		{[]any{int64(1), "on", int8(1)}, [3]bool{true, true, true}},
		{[]any{int64(1), []byte("on"), uint16(2)}, [3]bool{true, true, true}},
		{[]any{int64(1), "ON", int32(3)}, [3]bool{false, false, true}},
		{[]any{int64(1), nil, nil}, [3]bool{false, false, true}},
		{[]any{int64(1), "off", "2"}, [3]bool{false, true, true}},
	}
	for _, tc := range cases {
		for i, br := range brs {
			if got := br.matches(tc.row, nil); got != tc.want[i] {
				t.Errorf("rule %d matches(%v) = %v, want %v", i, tc.row, got, tc.want[i])
			}
		}
	}
}
