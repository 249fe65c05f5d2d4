package binlog

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParsePosition(t *testing.T) {
	good := []struct {
		in   string
		want Position
	}{
		{"binlog.000001:4", Position{"binlog.000001", 4}},
		{"mysql-bin.000123:4294967295", Position{"mysql-bin.000123", 4294967295}},
		{"/var/lib/mysql/binlog.000007:0", Position{"/var/lib/mysql/binlog.000007", 0}},
		{"odd:name.000002:120", Position{"odd:name.000002", 120}}, // the last ':' separates
	}
	for _, tc := range good {
		got, err := ParsePosition(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePosition(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
	for _, in := range []string{"", "binlog.000001", ":4", "binlog.000001:", "binlog.000001:-1",
		"binlog.000001:4294967296", "binlog.000001:x", "binlog.000001: 4"} {
		if got, err := ParsePosition(in); err == nil {
			t.Errorf("ParsePosition(%q) = %+v, want an error", in, got)
		} else if !strings.Contains(err.Error(), "binlog position") {
			t.Errorf("ParsePosition(%q) error %q does not say what it parsed", in, err)
		}
	}
	if !(Position{}).IsZero() || (Position{File: "b.000001"}).IsZero() || (Position{Pos: 4}).IsZero() {
		t.Error("IsZero is wrong")
	}
}

func TestVersion(t *testing.T) {
	for _, tc := range []struct {
		p    Position
		want uint64
	}{
		{Position{"binlog.000001", 4}, 1<<32 | 4},
		{Position{"mysql-bin.000002", 0}, 2 << 32},
		{Position{"b.999999", 4294967295}, 999999<<32 | 4294967295},
		{Position{"b.1000000", 7}, 1000000<<32 | 7}, // past six digits
		{Position{"/abs/path.d/binlog.000003", 9}, 3<<32 | 9},
		{Position{"b.4294967295", 1}, 4294967295<<32 | 1},
	} {
		got, err := tc.p.Version()
		if err != nil || got != tc.want {
			t.Errorf("%v.Version() = %d, %v; want %d", tc.p, got, err, tc.want)
		}
	}
	for _, f := range []string{"", "binlog", "binlog.", "binlog.abc", "binlog.-1", "binlog.4294967296", "b.000001x"} {
		if v, err := (Position{File: f, Pos: 4}).Version(); err == nil {
			t.Errorf("Version of file %q = %d, want an error", f, v)
		}
	}
}

// Version orders positions as the binlog does: by file number, then offset.
func TestVersionMonotonic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ps := []Position{
		{"binlog.000001", 4}, {"binlog.000001", 4294967295}, {"binlog.000002", 0}, {"binlog.000002", 4},
		{"binlog.000009", 100}, {"binlog.000010", 4}, {"binlog.999999", 4294967295}, {"binlog.1000000", 4},
	}
	for range 1000 {
		ps = append(ps, Position{File: fmt.Sprintf("binlog.%06d", r.Uint32N(2_000_000)), Pos: r.Uint32()})
	}
	sort.SliceStable(ps, func(i, j int) bool {
		fi, fj := fileNum(ps[i].File), fileNum(ps[j].File)
		if fi != fj {
			return fi < fj
		}
		return ps[i].Pos < ps[j].Pos
	})
	for i := 1; i < len(ps); i++ {
		a, errA := ps[i-1].Version()
		b, errB := ps[i].Version()
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		same := ps[i-1] == ps[i]
		if (same && a != b) || (!same && a >= b) {
			t.Fatalf("Version(%v) = %d, Version(%v) = %d: not strictly increasing", ps[i-1], a, ps[i], b)
		}
	}
}

func fileNum(f string) uint64 {
	n, _ := strconv.ParseUint(f[strings.LastIndexByte(f, '.')+1:], 10, 64)
	return n
}

func TestTable(t *testing.T) {
	tb := NewTable("Shop", "Goods", []string{"goodsId", "Name", "price"}, []bool{false, false, true})
	if tb.FullName() != "Shop.Goods" {
		t.Errorf("FullName = %q", tb.FullName())
	}
	for name, want := range map[string]int{"goodsid": 0, "GOODSID": 0, "name": 1, "Price": 2} {
		if i, ok := tb.Column(name); !ok || i != want {
			t.Errorf("Column(%q) = %d, %v; want %d", name, i, ok, want)
		}
	}
	if _, ok := tb.Column("stock"); ok {
		t.Error("Column(stock) found a column that does not exist")
	}
	if d := NewTable("s", "t", []string{"a", "b"}, nil).Decimal; len(d) != 2 || d[0] || d[1] {
		t.Errorf("nil decimal flags become %v, want [false false]", d)
	}
	if Insert.String() != "insert" || Update.String() != "update" || Delete.String() != "delete" || Op(9).String() != "op(9)" {
		t.Error("Op.String is wrong")
	}
	tx := Txn{Changes: make([]Change, 3)}
	if tx.Rows() != 3 {
		t.Errorf("Rows = %d", tx.Rows())
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.SetDefaults()
	want := Config{Addr: "127.0.0.1:3306", User: "root", Flavor: "auto", ServerID: 4242, Heartbeat: time.Second,
		MaxTxnChanges: 100_000, Start: StartConfig{From: FromCheckpoint}}
	if c.Addr != want.Addr || c.User != want.User || c.Flavor != want.Flavor || c.ServerID != want.ServerID ||
		c.Heartbeat != want.Heartbeat || c.MaxTxnChanges != want.MaxTxnChanges || c.Start != want.Start {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of defaults: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		err  string // "" = valid
	}{
		{"mariadb", func(c *Config) { c.Flavor = "mariadb" }, ""},
		{"position", func(c *Config) { c.Start = StartConfig{From: FromPosition, Position: "binlog.000001:4"} }, ""},
		{"gtid", func(c *Config) { c.Start = StartConfig{From: FromGTID, GTID: "0-1-5"} }, ""},
		{"current", func(c *Config) { c.Start.From = FromCurrent }, ""},
		{"no port", func(c *Config) { c.Addr = "localhost" }, `mysql.addr "localhost": want host:port`},
		{"no host", func(c *Config) { c.Addr = ":3306" }, `mysql.addr ":3306": want host:port`},
		{"bad port", func(c *Config) { c.Addr = "h:99999" }, `mysql.addr "h:99999": bad port`},
		{"flavor", func(c *Config) { c.Flavor = "postgres" }, `mysql.flavor "postgres"`},
		{"heartbeat low", func(c *Config) { c.Heartbeat = time.Millisecond }, "mysql.heartbeat 1ms"},
		{"heartbeat high", func(c *Config) { c.Heartbeat = time.Hour }, "mysql.heartbeat 1h0m0s"},
		{"max txn", func(c *Config) { c.MaxTxnChanges = 99 }, "mysql.max_txn_changes 99: want at least 100"},
		{"bad position", func(c *Config) { c.Start = StartConfig{From: FromPosition, Position: "nope"} }, "mysql.start.position: binlog position"},
		{"gtid missing", func(c *Config) { c.Start = StartConfig{From: FromGTID} }, "mysql.start.gtid: required"},
		{"bad from", func(c *Config) { c.Start.From = "begin" }, `mysql.start.from "begin"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			c.SetDefaults()
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.err)):
				t.Errorf("Validate: %v, want %q", err, tc.err)
			}
		})
	}
}

func TestConvertText(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		typ  string
		want any
	}{
		{nil, "INT", nil},
		{[]byte("-5"), "INT", int64(-5)},
		{[]byte("18446744073709551615"), "UNSIGNED BIGINT", uint64(18446744073709551615)},
		{[]byte("255"), "UNSIGNED TINYINT", uint64(255)},
		{[]byte("2024"), "YEAR", int64(2024)},
		{[]byte("1.5"), "FLOAT", float32(1.5)},
		{[]byte("0.1"), "DOUBLE", 0.1},
		{[]byte("379.00"), "DECIMAL", "379.00"},
		{[]byte("x\x00y"), "VARBINARY", []byte("x\x00y")},
		{[]byte{1, 0}, "BIT", uint64(256)}, // as Source renders BIT
		{[]byte{0x80, 0, 0, 0, 0, 0, 0, 1}, "BIT", uint64(0x8000000000000001)},
		{[]byte("text"), "VARCHAR", "text"},
		{[]byte("2024-01-02 03:04:05"), "DATETIME", "2024-01-02 03:04:05"},
	} {
		got := convertText(tc.in, tc.typ)
		if !equalAny(got, tc.want) {
			t.Errorf("convertText(%q, %s) = %#v, want %#v", tc.in, tc.typ, got, tc.want)
		}
	}
	// The result must not alias the driver's buffer.
	buf := []byte("abc")
	got := convertText(buf, "BLOB").([]byte)
	buf[0] = 'X'
	if string(got) != "abc" {
		t.Error("convertText returned bytes that alias the scan buffer")
	}
}

func equalAny(a, b any) bool {
	if ab, ok := a.([]byte); ok {
		bb, ok := b.([]byte)
		return ok && string(ab) == string(bb)
	}
	return a == b
}

func TestStatementHelpers(t *testing.T) {
	for q, want := range map[string]bool{"INSERT INTO t": true, "update t set": true, "DELETE FROM t": true,
		"replace into t": true, "SAVEPOINT a": false, "ALTER TABLE t": false} {
		if isDML(q) != want {
			t.Errorf("isDML(%q) = %v", q, !want)
		}
	}
	if !isTruncate("truncate table t") || !isTruncate("TRUNCATE t") || isTruncate("TRUNC") {
		t.Error("isTruncate is wrong")
	}
}
