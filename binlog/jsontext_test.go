package binlog

import (
	"context"
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/rs/zerolog"
)

// jobject is a JSON object whose keys are in the order MySQL stores them
// (by length, then bytes).
type jobject []struct {
	k string
	v any
}

// jsonb encodes v in MySQL's binary JSON format (small objects and arrays
// only): the type byte and the value.
func jsonb(v any) (byte, []byte) {
	switch x := v.(type) {
	case nil:
		return 0x04, []byte{0x00}
	case bool:
		if x {
			return 0x04, []byte{0x01}
		}
		return 0x04, []byte{0x02}
	case int:
		return 0x05, binary.LittleEndian.AppendUint16(nil, uint16(int16(x)))
	case float64:
		return 0x0b, binary.LittleEndian.AppendUint64(nil, math.Float64bits(x))
	case string:
		var b []byte
		n := len(x)
		for n >= 0x80 {
			b = append(b, byte(n)|0x80)
			n >>= 7
		}
		return 0x0c, append(append(b, byte(n)), x...)
	case []any:
		return 0x02, container(nil, x)
	case jobject:
		keys, vals := make([]string, len(x)), make([]any, len(x))
		for i, e := range x {
			keys[i], vals[i] = e.k, e.v
		}
		return 0x00, container(keys, vals)
	}
	panic("jsonb: unsupported value")
}

// container lays out a small object (keys != nil) or array: count, size,
// key entries, value entries (literals and int16 inlined), keys, values.
func container(keys []string, vals []any) []byte {
	n := len(vals)
	head := 4 + 4*len(keys) + 3*n
	var tail []byte
	keyEntries := make([]byte, 0, 4*len(keys))
	for _, k := range keys {
		keyEntries = binary.LittleEndian.AppendUint16(keyEntries, uint16(head+len(tail)))
		keyEntries = binary.LittleEndian.AppendUint16(keyEntries, uint16(len(k)))
		tail = append(tail, k...)
	}
	valEntries := make([]byte, 0, 3*n)
	for _, v := range vals {
		typ, data := jsonb(v)
		valEntries = append(valEntries, typ)
		if typ == 0x04 || typ == 0x05 { // inlined
			valEntries = append(valEntries, data[0], 0)
			if typ == 0x05 {
				valEntries[len(valEntries)-1] = data[1]
			}
			continue
		}
		valEntries = binary.LittleEndian.AppendUint16(valEntries, uint16(head+len(tail)))
		tail = append(tail, data...)
	}
	out := binary.LittleEndian.AppendUint16(nil, uint16(n))
	out = binary.LittleEndian.AppendUint16(out, uint16(head+len(tail)))
	out = append(append(append(out, keyEntries...), valEntries...), tail...)
	return out
}

// event frames body as a binlog event of type typ with a (not verified)
// checksum.
func event(typ replication.EventType, logPos uint32, body []byte) *replication.BinlogEvent {
	raw := make([]byte, replication.EventHeaderSize, replication.EventHeaderSize+len(body)+4)
	raw[4] = byte(typ)
	binary.LittleEndian.PutUint32(raw[5:9], 1)
	binary.LittleEndian.PutUint32(raw[9:13], uint32(replication.EventHeaderSize+len(body)+4))
	binary.LittleEndian.PutUint32(raw[13:17], logPos)
	raw = append(append(raw, body...), 0, 0, 0, 0)
	h := &replication.EventHeader{}
	if err := h.Decode(raw); err != nil {
		panic(err)
	}
	return &replication.BinlogEvent{RawData: raw, Header: h, Event: &replication.GenericEvent{}}
}

// MySQL 8 writes JSON columns to the binlog in its binary form, which
// go-mysql renders as text; the snapshot reads the text MySQL's SELECT
// prints. The stream must write the same text: MySQL's key order, its
// number forms, a space after ',' and ':', and only MySQL's escapes. No
// MySQL server runs here: the table map and row events of a MySQL JSON
// column are built in the test (after a real MariaDB format description)
// and read by the decoder and reader the daemon runs.
func TestMySQLJSONRenderedAsSelect(t *testing.T) {
	db := freshDB(t, "jsontext")
	e := startSource(t, mariadb, db, 100)
	e.exec("CREATE TABLE t (id INT PRIMARY KEY)")
	fde := captureTxn(t, e, "INSERT INTO t VALUES (1)").fde

	// What MySQL 8 prints for each document (SELECT doc, JSON_OBJECT(…)).
	docs := []struct {
		doc  any
		want string
	}{
		{jobject{{"a", 1}, {"b", []any{true, false, nil, 2.5, "x<y&z>"}}, {"cc", jobject{{"d", "é\n\"q\"\\"}}}},
			`{"a": 1, "b": [true, false, null, 2.5, "x<y&z>"], "cc": {"d": "é\n\"q\"\\"}}`},
		{jobject{{"k,:", "v, w: x"}, {"long key", []any{}}}, `{"k,:": "v, w: x", "long key": []}`},
		{[]any{1, 2.0, -3, jobject{}}, `[1, 2.0, -3, {}]`},
		{"just \u2028 text", "\"just \u2028 text\""},
		{nil, `null`},
	}

	src := NewSource(Config{MaxTxnChanges: 100, MaxTxnBytes: 1 << 20}, "mysql", []string{"shop.docs"}, zerolog.Nop(), nil)
	out := make(chan *Txn, 1)
	r := &reader{src: src, out: out, file: "binlog.000001", tables: map[uint64]*Table{}}
	dec := newDecoder(src.parserOptions)
	emit := func(ev *replication.BinlogEvent) error {
		r.signedness = dec.takeTables() // as the stream hands on a unit's
		return r.handle(context.Background(), ev)
	}
	if err := dec.decode(fde, emit); err != nil {
		t.Fatal(err)
	}

	// Table map of shop.docs (id INT, doc JSON) with its column names, as
	// binlog_row_metadata=FULL writes it.
	const tableID = 77
	tm := binary.LittleEndian.AppendUint32(nil, tableID)
	tm = append(tm, 0, 0, 0, 0) // rest of the 6-byte id, flags
	tm = append(tm, 4, 's', 'h', 'o', 'p', 0, 4, 'd', 'o', 'c', 's', 0)
	tm = append(tm, 2, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_JSON)
	tm = append(tm, 1, 4)                                // metadata: the JSON length's 4 bytes
	tm = append(tm, 0x02)                                // nullable: doc
	tm = append(tm, 1, 1, 0x00)                          // signedness: id signed
	tm = append(tm, 4, 7, 2, 'i', 'd', 3, 'd', 'o', 'c') // column names
	// One row per document.
	rows := binary.LittleEndian.AppendUint32(nil, tableID)
	rows = append(rows, 0, 0, 0, 0)
	rows = append(rows, 2, 0x03) // 2 columns, both present
	for i, d := range docs {
		typ, data := jsonb(d.doc)
		rows = append(rows, 0x00) // no NULLs
		rows = binary.LittleEndian.AppendUint32(rows, uint32(i))
		rows = binary.LittleEndian.AppendUint32(rows, uint32(1+len(data)))
		rows = append(append(rows, typ), data...)
	}
	xid := binary.LittleEndian.AppendUint64(nil, 9)
	for _, ev := range []*replication.BinlogEvent{
		event(replication.TABLE_MAP_EVENT, 1000, tm),
		event(replication.WRITE_ROWS_EVENTv1, 2000, rows),
		event(replication.XID_EVENT, 3000, xid),
	} {
		if err := dec.decode(ev, emit); err != nil {
			t.Fatal(err)
		}
	}
	var txn *Txn
	select {
	case txn = <-out:
	case <-time.After(10 * time.Second):
		t.Fatal("no transaction out of the reader")
	}
	if len(txn.Changes) != len(docs) {
		t.Fatalf("%d rows, want %d", len(txn.Changes), len(docs))
	}
	for i, d := range docs {
		if got := txn.Changes[i].After[1]; got != d.want {
			t.Errorf("document %d: stream wrote %#v\n\t\t\tMySQL's SELECT prints %#v", i, got, d.want)
		}
	}
}

func TestMySQLJSONText(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1,"b":[1,2]}`:      `{"a": 1, "b": [1, 2]}`,
		`"a,b:c"`:                `"a,b:c"`,
		`["\"",":",","]`:         `["\"", ":", ","]`,
		`["\\",1]`:               `["\\", 1]`,
		`["\u003c\u0026\u003e"]`: `["<&>"]`,
		`["\\u003c"]`:            `["\\u003c"]`,
		`["\u001f"]`:             `["\u001f"]`,
		``:                       `null`,
	} {
		if got := mysqlJSONText([]byte(in)); got != want {
			t.Errorf("mysqlJSONText(%s) = %s, want %s", in, got, want)
		}
	}
}
