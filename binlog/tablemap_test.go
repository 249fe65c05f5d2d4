package binlog

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/rs/zerolog"
)

// A table map event that repeats (before every row event of its table)
// is not read again when its body is the same, whatever its header says;
// one whose body changed (a renamed column) is.
func TestTableMapReadOnce(t *testing.T) {
	db := freshDB(t, "tablemap")
	e := startSource(t, mariadb, db, 100)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	fde := captureTxn(t, e, "INSERT INTO t VALUES (1)").fde

	src := NewSource(Config{MaxTxnChanges: 100, MaxTxnBytes: 1 << 20}, "mariadb", []string{"shop.items"}, zerolog.Nop(), nil)
	r := &reader{src: src, out: make(chan *Txn, 1), file: "binlog.000001", tables: map[uint64]*Table{}}
	dec := newDecoder(src.parserOptions)
	emit := func(ev *replication.BinlogEvent) error {
		r.signedness = dec.takeTables() // as the stream hands on a unit's
		return r.handle(context.Background(), ev)
	}
	if err := dec.decode(fde, emit); err != nil {
		t.Fatal(err)
	}
	tableMap := func(col string, logPos uint32) *replication.BinlogEvent { return itemsTableMap(col, logPos, nil) }
	if err := dec.decode(tableMap("id", 100), emit); err != nil {
		t.Fatal(err)
	}
	first := r.tables[5]
	if first == nil || first.Columns[0] != "id" {
		t.Fatalf("table after the first map: %+v", first)
	}
	// The same map at another position: kept as read, without the work
	// of reading it (which allocates the column names, conversions…).
	// Each repeat is a new event, as off the wire.
	var again []*replication.BinlogEvent
	for i := range 101 {
		if err := dec.decode(tableMap("id", uint32(200+i)), func(ev *replication.BinlogEvent) error { again = append(again, ev); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if allocs := testing.AllocsPerRun(100, func() { _ = r.handle(context.Background(), again[n]); n++ }); allocs != 0 {
		t.Errorf("an unchanged table map was read again: %.0f allocations", allocs)
	}
	if r.tables[5] != first {
		t.Error("an unchanged table map replaced its table")
	}
	// The column renamed: read again.
	if err := dec.decode(tableMap("ix", 300), emit); err != nil {
		t.Fatal(err)
	}
	if got := r.tables[5]; got == first || got.Columns[0] != "ix" {
		t.Errorf("after a rename the table is %+v, want column ix", got)
	}
}

// The decoder takes a repeated table map's optional metadata (column
// names, signedness…) from the last one of its table id with the same
// body, instead of having go-mysql decode it again; a changed body is
// decoded.
func TestDecoderReusesTableMap(t *testing.T) {
	db := freshDB(t, "tablemapreuse")
	e := startSource(t, mariadb, db, 100)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	fde := captureTxn(t, e, "INSERT INTO t VALUES (1)").fde

	src := NewSource(Config{MaxTxnChanges: 100, MaxTxnBytes: 1 << 20}, "mariadb", []string{"shop.items"}, zerolog.Nop(), nil)
	dec := newDecoder(src.parserOptions)
	var got []*replication.TableMapEvent
	emit := func(ev *replication.BinlogEvent) error {
		if tm, ok := ev.Event.(*replication.TableMapEvent); ok {
			got = append(got, tm)
		}
		return nil
	}
	if err := dec.decode(fde, emit); err != nil {
		t.Fatal(err)
	}
	unsigned := []byte{1, 1, 0x80} // signedness: the column is UNSIGNED
	tableMap := func(col string, logPos uint32) *replication.BinlogEvent { return itemsTableMap(col, logPos, unsigned) }
	for i, col := range []string{"id", "id", "ix"} {
		if err := dec.decode(tableMap(col, uint32(100+i)), emit); err != nil {
			t.Fatal(err)
		}
	}
	sign := dec.takeTables()
	for i, want := range []string{"id", "id", "ix"} {
		if names := got[i].ColumnNameString(); len(names) != 1 || names[0] != want {
			t.Errorf("table map %d: columns %v, want [%s]", i, names, want)
		}
		if b := sign[got[i]]; len(b) != 1 || b[0] != 0x80 {
			t.Errorf("table map %d: signedness %x, want 80", i, b)
		}
	}
	// Each event came off its own bytes: names sharing memory were not
	// decoded again.
	if &got[1].ColumnName[0][0] != &got[0].ColumnName[0][0] {
		t.Error("a repeated table map's column names were decoded again")
	}
	if &got[2].ColumnName[0][0] == &got[0].ColumnName[0][0] {
		t.Error("a changed table map took the old one's column names")
	}
}

// itemsTableMap builds a table map event of shop.items, table id 5, with
// one INT column named col, the optional metadata fields meta (each type,
// length, value) before its column name.
func itemsTableMap(col string, logPos uint32, meta []byte) *replication.BinlogEvent {
	tm := binary.LittleEndian.AppendUint32(nil, 5)
	tm = append(tm, 0, 0, 0, 0)
	tm = append(tm, 4, 's', 'h', 'o', 'p', 0, 5, 'i', 't', 'e', 'm', 's', 0)
	tm = append(tm, 1, mysql.MYSQL_TYPE_LONG, 0, 0x00)
	tm = append(tm, meta...)
	tm = append(tm, 4, byte(1+len(col)), byte(len(col)))
	return event(replication.TABLE_MAP_EVENT, logPos, append(tm, col...))
}
