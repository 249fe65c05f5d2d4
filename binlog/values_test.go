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
		{"latin1 bytes", latin1, []byte("\xdf"), []byte("ß")},
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
