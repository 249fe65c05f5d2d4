package binlog

import "testing"

func TestValueConv(t *testing.T) {
	enum := valueConv{enum: []string{"on_sale", "off"}}
	set := valueConv{set: []string{"a", "b", "c"}}
	latin1 := valueConv{latin1: true}
	for _, tc := range []struct {
		name string
		c    valueConv
		in   any
		want any
	}{
		{"enum 1", enum, int64(1), "on_sale"},
		{"enum 2", enum, int64(2), "off"},
		{"enum error value", enum, int64(0), ""},
		{"enum out of range", enum, int64(3), ""},
		{"enum NULL", enum, nil, nil},
		{"set empty", set, int64(0), ""},
		{"set a,c", set, int64(5), "a,c"},
		{"set all", set, int64(7), "a,b,c"},
		{"set NULL", set, nil, nil},
		{"latin1 string", latin1, "caf\xe9 \x80", "café €"},
		{"latin1 bytes", latin1, []byte("\xdf"), "ß"},
		{"text bytes", valueConv{text: true}, []byte("ü\x00"), "ü\x00"},
		{"text NULL", valueConv{text: true}, nil, nil},
		{"varbinary", valueConv{binary: true}, "\x00\xff", []byte("\x00\xff")},
		{"blob", valueConv{binary: true}, []byte("\xff"), []byte("\xff")},
		{"binary(4)", valueConv{binary: true, pad: 4}, "A", []byte("A\x00\x00\x00")},
		{"binary(4) empty", valueConv{binary: true, pad: 4}, "", []byte("\x00\x00\x00\x00")},
		{"binary(2) full", valueConv{binary: true, pad: 2}, "\xff\xfe", []byte("\xff\xfe")},
		{"bit", valueConv{bit: true}, int64(-1), uint64(18446744073709551615)},
		{"bit 5", valueConv{bit: true}, int64(5), uint64(5)},
		{"time(3) whole", valueConv{fsp: 3}, "838:59:59", "838:59:59.000"},
		{"time(3) zero", valueConv{fsp: 3}, "00:00:00", "00:00:00.000"},
		{"time(3) fraction", valueConv{fsp: 3}, "-00:00:00.001", "-00:00:00.001"},
		{"latin1 ascii", latin1, "abc", "abc"},
		{"latin1 NULL", latin1, nil, nil},
		{"none", valueConv{}, int64(3), int64(3)},
	} {
		got := tc.c.apply(tc.in)
		if !equalAny(got, tc.want) {
			t.Errorf("%s: apply(%#v) = %#v, want %#v", tc.name, tc.in, got, tc.want)
		}
	}
	sixtyFour := make([]string, 64)
	for i := range sixtyFour {
		sixtyFour[i] = string(rune('A' + i%26))
	}
	if got := (valueConv{set: sixtyFour}).apply(int64(-1 << 63)); got != "L" { // bit 63 only
		t.Errorf("SET bit 63 = %q, want L", got)
	}
	if !equalConvs(nil, map[int]valueConv{}) || equalConvs(map[int]valueConv{1: enum}, map[int]valueConv{1: set}) ||
		!equalConvs(map[int]valueConv{1: enum}, map[int]valueConv{1: {enum: []string{"on_sale", "off"}}}) {
		t.Error("equalConvs is wrong")
	}
}
