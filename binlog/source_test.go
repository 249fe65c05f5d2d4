package binlog

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	_ "github.com/go-sql-driver/mysql"
)

// mariadb is the server of this package's integration tests, private to
// the test binary; each test uses its own database.
var mariadb *testenv.MariaDB

func TestMain(m *testing.M) {
	var err error
	if mariadb, err = testenv.NewMariaDB(); err != nil {
		fmt.Fprintln(os.Stderr, "start MariaDB:", err)
		os.Exit(1)
	}
	code := m.Run()
	mariadb.Close()
	os.Exit(code)
}

// streamEnv runs a Source against the test server.
type streamEnv struct {
	t    *testing.T
	db   *sql.DB
	out  chan *Txn
	done chan error
	src  *Source
}

// freshDB (re)creates database name and returns a pool on it, opened like
// the daemon's (no parseTime: with it the driver hands DATETIME values to
// Snapshot as time.Time, formatted as RFC 3339).
func freshDB(t *testing.T, name string) *sql.DB {
	t.Helper()
	admin := mariadb.DB(t, "")
	for _, q := range []string{"DROP DATABASE IF EXISTS " + name, "CREATE DATABASE " + name} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("mysql", "root@tcp("+mariadb.Addr()+")/"+name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func startSource(t *testing.T, m *testenv.MariaDB, db *sql.DB, maxTxn int, watched ...string) *streamEnv {
	t.Helper()
	return startSourceLog(t, m, db, maxTxn, zerolog.Nop(), watched...)
}

// startSourceLog is startSource logging to log.
func startSourceLog(t *testing.T, m *testenv.MariaDB, db *sql.DB, maxTxn int, log zerolog.Logger, watched ...string) *streamEnv {
	t.Helper()
	return startSourceWith(t, m, db, maxTxn, log, func(*Source) {}, watched...)
}

// startSourceWith is startSourceLog with adjust applied to the Source
// before it runs.
func startSourceWith(t *testing.T, m *testenv.MariaDB, db *sql.DB, maxTxn int, log zerolog.Logger, adjust func(*Source), watched ...string) *streamEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	start, err := CurrentPosition(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: m.Addr(), User: "root", Flavor: "mariadb", ServerID: 7001, MaxTxnChanges: maxTxn}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := &streamEnv{t: t, db: db, out: make(chan *Txn, 1000), done: make(chan error, 1),
		src: NewSource(cfg, "mariadb", watched, log, prometheus.NewRegistry())}
	adjust(e.src)
	go func() { e.done <- e.src.Run(ctx, Start{Pos: start}, e.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("Source.Run after cancel = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Source.Run did not return after cancel")
		}
	})
	return e
}

func (e *streamEnv) exec(qs ...string) {
	e.t.Helper()
	for _, q := range qs {
		if _, err := e.db.Exec(q); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
	}
}

// tx runs the statements in one transaction.
func (e *streamEnv) tx(qs ...string) {
	e.t.Helper()
	tx, err := e.db.Begin()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, q := range qs {
		if _, err := tx.Exec(q); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		e.t.Fatal(err)
	}
}

func (e *streamEnv) next() *Txn {
	e.t.Helper()
	select {
	case t := <-e.out:
		return t
	case err := <-e.done:
		e.t.Fatalf("Source.Run returned %v", err)
	case <-time.After(10 * time.Second):
		e.t.Fatal("no transaction within 10s")
	}
	return nil
}

// render formats a row value as the sink does for keys.
func render(v any) string {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return fmt.Sprint(v)
}

func TestSource(t *testing.T) {
	m := mariadb
	db := freshDB(t, "src")
	mustExec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec(`CREATE TABLE w (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(10,2), t8 TINYINT, t16 SMALLINT,
		u64 BIGINT UNSIGNED, f DOUBLE, bin VARBINARY(8))`)
	mustExec("CREATE TABLE u (id INT PRIMARY KEY, v INT)")
	mustExec("CREATE TABLE my (id INT PRIMARY KEY, v INT) ENGINE=MyISAM")
	mustExec("INSERT INTO u VALUES (1, 1)")
	e := startSource(t, m, db, 100, "src.w", "SRC.My")

	// One transaction: the unwatched table's rows are dropped, the rest
	// arrive in order as one Txn.
	e.tx("INSERT INTO w VALUES (1, 'a', 379.00, -1, 300, 18446744073709551615, 2.5, x'00ff'), (2, NULL, 0.5, 0, 0, 0, 0, NULL)",
		"UPDATE u SET v = 2",
		"UPDATE w SET name = 'b' WHERE id = 1",
		"DELETE FROM w WHERE id = 2")
	tx := e.next()
	if tx.Partial || tx.DDL != "" || !strings.HasPrefix(tx.GTID, "0-1-") || tx.Commit.IsZero() {
		t.Errorf("txn header: %+v", tx)
	}
	if got := len(tx.Changes); got != 4 {
		t.Fatalf("%d changes, want 4 (2 inserts, 1 update, 1 delete of src.w)", got)
	}
	ops := []Op{Insert, Insert, Update, Delete}
	for i, ch := range tx.Changes {
		if ch.Op != ops[i] || ch.Table.FullName() != "src.w" {
			t.Errorf("change %d: %s on %s, want %s on src.w", i, ch.Op, ch.Table.FullName(), ops[i])
		}
	}
	wantCols := []string{"id", "name", "price", "t8", "t16", "u64", "f", "bin"}
	if tb := tx.Changes[0].Table; !reflect.DeepEqual(tb.Columns, wantCols) || !reflect.DeepEqual(tb.Decimal, []bool{false, false, true, false, false, false, false, false}) {
		t.Errorf("table columns %q decimal %v", tb.Columns, tb.Decimal)
	}
	row := tx.Changes[0].After
	want := []any{int32(1), "a", "379.00", int8(-1), int16(300), uint64(18446744073709551615), 2.5, []byte("\x00\xff")}
	for i := range want {
		if !equalAny(row[i], want[i]) {
			t.Errorf("column %s = %#v, want %#v", wantCols[i], row[i], want[i])
		}
	}
	if r := tx.Changes[1].After; r[1] != nil || r[7] != nil {
		t.Errorf("NULLs decoded as %#v %#v", r[1], r[7])
	}
	if up := tx.Changes[2]; up.Before[1] != "a" || up.After[1] != "b" {
		t.Errorf("update before/after name: %v -> %v", up.Before[1], up.After[1])
	}
	if d := tx.Changes[3]; d.After != nil || d.Before[0] != int32(2) {
		t.Errorf("delete: %+v", d)
	}
	end, err := CurrentPosition(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if tx.Pos != end {
		t.Errorf("txn Pos %s, want the position after it %s", tx.Pos, end)
	}
	if !e.src.Connected() {
		t.Error("Connected() = false while streaming")
	}

	// A transaction that touches only unwatched tables still moves the
	// position.
	e.exec("UPDATE u SET v = 3")
	tx = e.next()
	if len(tx.Changes) != 0 || tx.Pos.Pos <= end.Pos {
		t.Errorf("unwatched txn: %d changes at %s, want 0 after %s", len(tx.Changes), tx.Pos, end)
	}

	// A non-transactional table: BEGIN ... COMMIT as query events.
	e.exec("INSERT INTO my VALUES (1, 1), (2, 2)")
	if tx = e.next(); len(tx.Changes) != 2 || tx.Changes[1].After[1] != int32(2) || tx.Changes[0].Table.FullName() != "src.my" {
		t.Errorf("MyISAM insert: %+v", tx)
	}

	// DDL is its own transaction; later rows are named by the new layout
	// while rows written before it keep the old one.
	e.tx("INSERT INTO w (id, name) VALUES (10, 'before')")
	e.exec("ALTER TABLE w ADD COLUMN x INT FIRST", "INSERT INTO w (x, id, name) VALUES (42, 11, 'after')")
	before, ddl, after := e.next(), e.next(), e.next()
	if ddl.DDL == "" || !strings.Contains(ddl.DDL, "ADD COLUMN x") || len(ddl.Changes) != 0 {
		t.Errorf("DDL txn: %+v", ddl)
	}
	if b := before.Changes[0]; b.Table.Columns[0] != "id" || b.After[0] != int32(10) || b.After[1] != "before" {
		t.Errorf("row before ALTER: %q %v", b.Table.Columns, b.After)
	}
	if a := after.Changes[0]; a.Table.Columns[0] != "x" || a.After[0] != int32(42) || a.After[1] != int32(11) || a.After[2] != "after" {
		t.Errorf("row after ALTER: %q %v", a.Table.Columns, a.After)
	}
	if before.Changes[0].Table == after.Changes[0].Table {
		t.Error("the same *Table is used for two column layouts")
	}

	// An oversized transaction arrives in pieces; only the last is complete.
	var vals []string
	for i := 100; i < 350; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 'n%d')", i, i))
	}
	e.tx("INSERT INTO w (id, name) VALUES "+strings.Join(vals[:120], ","),
		"INSERT INTO w (id, name) VALUES "+strings.Join(vals[120:], ","),
		"UPDATE u SET v = 4")
	var rows int
	var last Position
	for pieces := 0; ; pieces++ {
		p := e.next()
		rows += len(p.Changes)
		if !last.IsZero() && p.Pos.Pos <= last.Pos {
			t.Errorf("piece %d at %s, not after %s", pieces, p.Pos, last)
		}
		last = p.Pos
		if p.Partial && len(p.Changes) < 100 {
			t.Errorf("piece %d has %d changes, fewer than max_txn_changes", pieces, len(p.Changes))
		}
		if !p.Partial {
			if pieces == 0 {
				t.Error("a 250-row transaction was not split with max_txn_changes=100")
			}
			break
		}
	}
	if rows != 250 {
		t.Errorf("pieces hold %d rows, want 250", rows)
	}
}

// Snapshot reads rows in the same Go types (as rendered) as the stream
// decodes them, so a key or value does not depend on where a row came from.
func TestSnapshotMatchesStream(t *testing.T) {
	m := mariadb
	// A server time zone other than the daemon's (UTC here): TIMESTAMPs
	// must still read the same from both sides.
	admin := m.DB(t, "")
	if _, err := admin.Exec("SET GLOBAL time_zone = '+08:00'"); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec("SET GLOBAL time_zone = 'SYSTEM'")
	db := freshDB(t, "snap")
	if _, err := db.Exec(`CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(10,2), t8 TINYINT,
		u8 TINYINT UNSIGNED, t16 SMALLINT, m24 MEDIUMINT, u64 BIGINT UNSIGNED, y YEAR, fl FLOAT, d DOUBLE,
		bin VARBINARY(8), dt DATETIME, dt6 DATETIME(6), da DATE, tm TIME, txt TEXT, ch CHAR(3), js JSON,
		st ENUM('on_sale', 'off'), bits BIT(8), tags SET('a', 'b', 'c'), l1 VARCHAR(20) CHARACTER SET latin1,
		lt TEXT CHARACTER SET latin1, le ENUM('é', 'ß') CHARACTER SET latin1, ls SET('ä', 'ö') CHARACTER SET latin1,
		big BIT(64), ts TIMESTAMP NULL, ts3 TIMESTAMP(3) NULL, bn BINARY(4), fx FLOAT, tm3 TIME(3), lb LONGBLOB)`); err != nil {
		t.Fatal(err)
	}
	e := startSource(t, m, db, 1000, "snap.t")
	e.exec(`INSERT INTO t VALUES (1, 'nm', 379.00, -5, 250, -300, 70000, 18446744073709551615, 2024, 1.5, 0.25,
		x'0102', '2024-01-02 03:04:05', '2024-01-02 03:04:05.123456', '2024-02-29', '12:34:56', 'long text', 'abc',
		'{"a": 1}', 'on_sale', b'00000101', 'a,c', 'é€Ÿÿ ok', 'Ä\nœ', 'ß', 'ä,ö', x'8000000000000001',
		'2024-01-02 03:04:05', '2024-07-01 00:00:00.125', x'00ff', 3.4028234663852886e38, '838:59:59', x'ff00'),
		(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
		NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		(3, '', 0, 0, 0, 0, 0, 0, 0, 0, 0, '', '2000-01-01', '2000-01-01', '2000-01-01', '00:00:00', '', '', '[]',
		'off', b'0', '', '', '', 'é', '', 0, '2000-01-01 08:00:00', '1970-01-01 08:00:01.000', '', 0.1, '-00:00:00.001', '')`)
	stream := e.next()

	snap, err := ReadChunk(context.Background(), db, "snap.t", []string{"id"}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Changes) != 3 || len(stream.Changes) != 3 {
		t.Fatalf("snapshot %d rows, stream %d rows, want 3", len(snap.Changes), len(stream.Changes))
	}
	if !reflect.DeepEqual(snap.Changes[0].Table.Columns, stream.Changes[0].Table.Columns) ||
		!reflect.DeepEqual(snap.Changes[0].Table.Decimal, stream.Changes[0].Table.Decimal) {
		t.Errorf("layouts differ: snapshot %q %v, stream %q %v", snap.Changes[0].Table.Columns, snap.Changes[0].Table.Decimal,
			stream.Changes[0].Table.Columns, stream.Changes[0].Table.Decimal)
	}
	cols := stream.Changes[0].Table.Columns
	for r := range 3 {
		for i, c := range cols {
			sv, tv := snap.Changes[r].After[i], stream.Changes[r].After[i]
			_, sb := sv.([]byte)
			_, tb := tv.([]byte)
			if (sv == nil) != (tv == nil) || render(sv) != render(tv) || sb != tb {
				t.Errorf("row %d column %s: snapshot %#v (%q), stream %#v (%q)", r+1, c, sv, render(sv), tv, render(tv))
			}
		}
	}
	// What the binlog holds differently from SELECT: TIMESTAMP in UTC
	// (written as 03:04:05 at +08:00), BINARY padding, FLOAT in full,
	// TIME's zero fraction, BIT(64) unsigned.
	for c, want := range map[string]string{"ts": "2024-01-01 19:04:05", "bn": "\x00\xff\x00\x00", "fx": "3.4028235e+38",
		"tm3": "838:59:59.000", "big": "9223372036854775809"} {
		if got := render(stream.Changes[0].After[slices.Index(cols, c)]); got != want {
			t.Errorf("column %s of row 1 reads %q, want %q", c, got, want)
		}
	}
	if snap.Partial || !snap.Snapshot.Done {
		t.Errorf("a chunk of all 3 rows (of 100) is not the table's last, complete: %+v", snap.Snapshot)
	}
}

// latin1ToUTF8 agrees with the server's own conversion of every byte.
func TestLatin1ToUTF8(t *testing.T) {
	m := mariadb
	db := m.DB(t, "")
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	var want string
	if err := db.QueryRow("SELECT CONVERT(CAST(? AS CHAR CHARACTER SET latin1) USING utf8mb4)", all).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if got := latin1ToUTF8(string(all)); got != want {
		for i := range all {
			g, w := latin1ToUTF8(string(all[i:i+1])), []rune(want)[i]
			if g != string(w) {
				t.Errorf("byte %#x: %q, server says %q", i, g, w)
			}
		}
	}
	if s := "plain ascii"; latin1ToUTF8(s) != s {
		t.Error("ASCII changed")
	}
}

// TestIntegerWidths: integers of every width at their limits, signed and
// UNSIGNED, read from the stream with the types go-mysql gives them
// (its signedness is applied by valueConv, see takeSignedness), and equal
// to what SELECT reads.
func TestIntegerWidths(t *testing.T) {
	m := mariadb
	db := freshDB(t, "ints")
	if _, err := db.Exec(`CREATE TABLE t (id INT PRIMARY KEY,
		s8 TINYINT, u8 TINYINT UNSIGNED, s16 SMALLINT, u16 SMALLINT UNSIGNED, s24 MEDIUMINT, u24 MEDIUMINT UNSIGNED,
		s32 INT, u32 INT UNSIGNED, s64 BIGINT, u64 BIGINT UNSIGNED)`); err != nil {
		t.Fatal(err)
	}
	e := startSource(t, m, db, 1000, "ints.t")
	e.exec(`INSERT INTO t VALUES
		(1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615),
		(2, 127, 128, 32767, 32768, 8388607, 8388608, 2147483647, 2147483648, 9223372036854775807, 9223372036854775808),
		(3, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0)`)
	stream := e.next()
	snap, err := ReadChunk(context.Background(), db, "ints.t", []string{"id"}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]any{
		{int32(1), int8(-128), uint8(255), int16(-32768), uint16(65535), int32(-8388608), uint32(16777215),
			int32(-2147483648), uint32(4294967295), int64(-9223372036854775808), uint64(18446744073709551615)},
		{int32(2), int8(127), uint8(128), int16(32767), uint16(32768), int32(8388607), uint32(8388608),
			int32(2147483647), uint32(2147483648), int64(9223372036854775807), uint64(9223372036854775808)},
		{int32(3), int8(-1), uint8(0), int16(-1), uint16(0), int32(-1), uint32(0), int32(-1), uint32(0), int64(-1), uint64(0)},
	}
	if len(stream.Changes) != 3 || len(snap.Changes) != 3 {
		t.Fatalf("stream %d rows, snapshot %d, want 3", len(stream.Changes), len(snap.Changes))
	}
	cols := stream.Changes[0].Table.Columns
	for r, row := range want {
		for i, w := range row {
			got := stream.Changes[r].After[i]
			if got != w {
				t.Errorf("row %d column %s: stream %#v, want %#v", r+1, cols[i], got, w)
			}
			if s := render(snap.Changes[r].After[i]); s != render(got) {
				t.Errorf("row %d column %s: snapshot %q, stream %q", r+1, cols[i], s, render(got))
			}
		}
	}
}
