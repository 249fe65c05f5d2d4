package binlog

import (
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestUnitsCut cuts the stream at every event, each a unit of its own for
// one of three decoding workers. A worker then starts inside statements
// whose table maps another one parsed: a 300-row UPDATE spread over several
// rows events, and a multi-table UPDATE of two tables not seen before (two
// table maps, then rows of each). Every row must still be decoded, in
// order, with its values, and after an ALTER with its new columns.
func TestUnitsCut(t *testing.T) {
	db := freshDB(t, "units")
	for _, q := range []string{
		"CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(200))",
		"CREATE TABLE b (id INT PRIMARY KEY, w INT UNSIGNED)",
		"CREATE TABLE c (id INT PRIMARY KEY, v VARCHAR(200))",
		"INSERT INTO a SELECT seq, REPEAT('x', 100) FROM seq_1_to_300",
		"INSERT INTO b SELECT seq, 4000000000 FROM seq_1_to_300",
		"INSERT INTO c SELECT seq, REPEAT('x', 100) FROM seq_1_to_300",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e := startSourceWith(t, mariadb, db, 100_000, zerolog.Nop(), func(s *Source) { s.unitBytes, s.workers = 1, 3 }, "units.a", "units.b", "units.c")
	e.tx("UPDATE a SET v = CONCAT('y', id, REPEAT('z', 100))",
		"UPDATE c JOIN b ON c.id = b.id SET c.v = CONCAT('m', c.id, REPEAT('q', 100)), b.w = b.w + c.id WHERE c.id <= 200")
	e.exec("ALTER TABLE a ADD COLUMN u INT DEFAULT 7", "UPDATE a SET u = -id WHERE id <= 50")

	tx := e.next()
	if len(tx.Changes) != 700 {
		t.Fatalf("%d changes in the transaction, want 300 + 200 + 200", len(tx.Changes))
	}
	for i, c := range tx.Changes[:300] {
		if want := fmt.Sprintf("y%d%s", i+1, strings.Repeat("z", 100)); c.Table.Name != "a" || c.After[0] != int32(i+1) || c.After[1] != want {
			t.Fatalf("change %d: %s %v, want a [%d %s]", i, c.Table.Name, c.After, i+1, want)
		}
	}
	seen := map[string]int{}
	for _, c := range tx.Changes[300:] {
		id := c.After[0].(int32)
		switch c.Table.Name {
		case "c":
			if c.After[1] != fmt.Sprintf("m%d%s", id, strings.Repeat("q", 100)) {
				t.Errorf("c %d: v = %v", id, c.After[1])
			}
		case "b":
			if c.After[1] != uint32(4000000000+int64(id)) {
				t.Errorf("b %d: w = %v (%T), want %d", id, c.After[1], c.After[1], 4000000000+int64(id))
			}
		}
		seen[c.Table.Name]++
	}
	if seen["c"] != 200 || seen["b"] != 200 {
		t.Errorf("multi-table UPDATE: %v, want 200 rows of each", seen)
	}
	if ddl := e.next(); ddl.DDL == "" {
		t.Fatalf("want the ALTER, got %d changes", len(ddl.Changes))
	}
	tx = e.next()
	if len(tx.Changes) != 50 {
		t.Fatalf("%d changes after the ALTER, want 50", len(tx.Changes))
	}
	for i, c := range tx.Changes {
		if len(c.Table.Columns) != 3 || c.Table.Columns[2] != "u" || c.After[2] != int32(-(i+1)) {
			t.Fatalf("change %d after the ALTER: columns %v, row %v", i, c.Table.Columns, c.After)
		}
	}
}

// watched runs for every rows event: case-insensitive, without allocating
// for ASCII names.
func TestWatched(t *testing.T) {
	s := NewSource(Config{}, "mariadb", []string{"shop.Items", "Café.Ítems", "s." + strings.Repeat("t", 200)}, zerolog.Nop(), nil)
	for _, c := range []struct {
		schema, table string
		want          bool
	}{
		{"shop", "items", true},
		{"SHOP", "Items", true},
		{"shop", "orders", false},
		{"café", "ítems", true},
		{"CAFÉ", "ÍTEMS", true},
		{"s", strings.Repeat("T", 200), true},
		{"shop.items", "", false},
	} {
		if got := s.watched([]byte(c.schema), []byte(c.table)); got != c.want {
			t.Errorf("watched(%s, %s) = %v, want %v", c.schema, c.table, got, c.want)
		}
	}
	schema, table := []byte("Shop"), []byte("orders")
	if n := testing.AllocsPerRun(100, func() { s.watched(schema, table) }); n != 0 {
		t.Errorf("watched allocates %.0f times per call", n)
	}
}
