package binlog

import "testing"

func TestTruncatedTable(t *testing.T) {
	for _, c := range []struct{ q, schema, want string }{
		{"TRUNCATE TABLE items", "shop", "shop.items"},
		{"truncate items", "shop", "shop.items"},
		{"TRUNCATE TABLE Shop.Items", "", "shop.items"},
		{"TRUNCATE TABLE `sh op`.`it``ems`;", "x", "sh op.it`ems"},
		{"TRUNCATE TABLE `a` . `b`", "", "a.b"},
		{"  TRUNCATE\n TABLE items ", "s", "s.items"},
		{"TRUNCATE TABLE items", "", ""},  // no schema to resolve against
		{"TRUNCATE TABLE a, b", "s", ""},  // not MySQL syntax: refused
		{"DROP TABLE items", "s", ""},     // not a TRUNCATE
		{"TRUNCATE TABLE a.b.c", "s", ""}, // not a table name
	} {
		got, ok := truncatedTable(c.q, c.schema)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("truncatedTable(%q, %q) = %q, %v; want %q", c.q, c.schema, got, ok, c.want)
		}
	}
}
