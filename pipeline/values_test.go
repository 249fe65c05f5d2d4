package pipeline_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// valueKind says how a column is rendered (see "Value encoding" in the
// README): numbers unquoted in JSON, text as a JSON string, binary as a
// base64 JSON string and as raw bytes elsewhere.
type valueKind int

const (
	kNum valueKind = iota
	kText
	kBin
	kBit
)

type valueCol struct {
	name, ddl string
	kind      valueKind
}

// valueCols has one column per MySQL type.
var valueCols = []valueCol{
	{"id", "INT PRIMARY KEY", kNum},
	{"i8", "TINYINT", kNum}, {"u8", "TINYINT UNSIGNED", kNum},
	{"i16", "SMALLINT", kNum}, {"u16", "SMALLINT UNSIGNED", kNum},
	{"i24", "MEDIUMINT", kNum}, {"u24", "MEDIUMINT UNSIGNED", kNum},
	{"i32", "INT", kNum}, {"u32", "INT UNSIGNED", kNum},
	{"i64", "BIGINT", kNum}, {"u64", "BIGINT UNSIGNED", kNum},
	{"dc", "DECIMAL(65,30)", kNum}, {"dc2", "DECIMAL(10,2)", kNum},
	{"f", "FLOAT", kNum}, {"d", "DOUBLE", kNum},
	{"da", "DATE", kText}, {"tm", "TIME", kText}, {"tm6", "TIME(6)", kText},
	{"dt", "DATETIME", kText}, {"dt6", "DATETIME(6)", kText},
	{"ts", "TIMESTAMP NULL", kText}, {"ts6", "TIMESTAMP(6) NULL", kText},
	{"y", "YEAR", kNum},
	{"b1", "BIT(1)", kBit}, {"b64", "BIT(64)", kBit},
	{"e", "ENUM('a', 'b', 'ü😀')", kText}, {"s", "SET('x', 'y', 'ζ')", kText},
	{"js", "JSON", kText},
	{"c", "CHAR(8)", kText}, {"vc", "VARCHAR(64)", kText}, {"tx", "TEXT", kText},
	{"l1", "VARCHAR(32) CHARACTER SET latin1", kText}, {"l1c", "CHAR(4) CHARACTER SET latin1", kText},
	{"l1t", "TEXT CHARACTER SET latin1", kText},
	{"bn", "BINARY(8)", kBin}, {"vb", "VARBINARY(64)", kBin}, {"bl", "BLOB", kBin}, {"lb", "LONGBLOB", kBin},
	{"g", "GEOMETRY", kBin},
}

// bigBlob is the size of the large value (LONGBLOB): 64 MiB, which needs
// max_allowed_packet above it on the server (1 MiB with -short).
var bigBlob = 64 << 20

// valueRows returns edge values, in valueCols order after id, inserted at
// time_zone +08:00 (TIMESTAMPs are read back in UTC).
func valueRows() [][]string {
	return [][]string{
		{"127", "255", "32767", "65535", "8388607", "16777215", "2147483647", "4294967295",
			"9223372036854775807", "18446744073709551615",
			"99999999999999999999999999999999999.999999999999999999999999999999", "99999999.99",
			"3.4028234663852886e38", "1.7976931348623157e308",
			"'9999-12-31'", "'838:59:59'", "'838:59:59.000000'", "'9999-12-31 23:59:59'", "'9999-12-31 23:59:59.999999'",
			"'2038-01-19 11:14:07'", "'2038-01-19 11:14:07.999999'", "2155",
			"b'1'", "x'FFFFFFFFFFFFFFFF'", "'ü😀'", "'x,y,ζ'", `'{"a": [1, 2.5, "ü😀"], "b": null, "c": "\\u0000"}'`,
			"'abcdefgh'", "'héllo 😀🎉 中文 \"q\" \\\\ {}:'", "CONCAT('line\\nnext\\ttab ', CHAR(1), ' ', CHAR(0), ' \\b\\f end')",
			"'café € Ÿ ÿ Œ'", "'Äö'", "'ßœ\\n'",
			"x'00FF00FF00FF00FF'", "x'00FFC2AFB0457FEE'", "x'" + allBytesHex() + "'",
			fmt.Sprintf("CONCAT(x'00FFFE', REPEAT(x'00FF80C0E0F0F8FE', %d), x'EE')", bigBlob/8),
			"ST_GeomFromText('POINT(1 2)')"},
		{"-128", "0", "-32768", "0", "-8388608", "0", "-2147483648", "0",
			"-9223372036854775808", "0",
			"-99999999999999999999999999999999999.999999999999999999999999999999", "-99999999.99",
			"-3.4028234663852886e38", "-1.7976931348623157e308",
			"'1000-01-01'", "'-838:59:59'", "'-00:00:00.000001'", "'1000-01-01 00:00:00'", "'1000-01-01 00:00:00.000001'",
			"'1970-01-01 08:00:01'", "'1970-01-01 08:00:01.000001'", "1901",
			"b'0'", "0", "'a'", "''", "'[]'",
			"''", "''", "''", "''", "''", "''",
			"''", "''", "''", "''",
			"ST_GeomFromText('LINESTRING(0 0, 1.5 -2.25)')"},
		{"NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL",
			"NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL",
			"NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"},
		{"0", "1", "-1", "1", "-1", "1", "-1", "1", "-1", "1",
			"-0.000000000000000000000000000001", "-0.50",
			"0.1", "0.30000000000000004",
			"'0000-00-00'", "'-12:34:56'", "'-12:34:56.789'", "'0000-00-00 00:00:00'", "'2024-02-29 12:34:56.5'",
			"'0000-00-00 00:00:00'", "'0000-00-00 00:00:00.000000'", "0",
			"b'1'", "x'8000000000000001'", "'b'", "'y'", `'"just a string"'`,
			"'a  '", "'trailing  '", "'  '", "'a '", "'€ '", "'\\0x'",
			"x'41'", "'a '", "x'00'", "x'FF'",
			"ST_GeomFromText('POINT(-0.1 1e300)')"},
		{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10",
			"1.5", "1.00",
			"1.401298464324817e-45", "4.9406564584124654e-324",
			"'2024-02-29'", "'00:00:00'", "'00:00:00.000001'", "'2024-02-29 00:00:00'", "'1970-01-01 00:00:00.000000'",
			"'2024-02-29 08:00:00'", "'2024-02-29 08:00:00.5'", "2024",
			"b'0'", "x'0000000000000001'", "'ü😀'", "'x,ζ'", `'{}'`,
			"'x'", "'😀'", "REPEAT('ü', 1000)", "'\\''", "'\"'", "REPEAT('Ÿ', 1000)",
			"x'FF'", "x'00'", "REPEAT(x'FE', 65535)", "REPEAT(x'80', 100000)",
			"ST_GeomFromText('POLYGON((0 0, 1 0, 1 1, 0 0))')"},
	}
}

func allBytesHex() string {
	var b strings.Builder
	for i := range 256 {
		fmt.Fprintf(&b, "%02X", 255-i)
	}
	return b.String()
}

// TestValueEncoding: every MySQL type reaches Redis exactly, the same from
// the snapshot and from the stream, as README's "Value encoding" says: one
// table is snapshotted, the same rows are then inserted into a second one
// while the daemon streams, and every value of both (rewrite json and
// hash, mirror, key and member templates) is compared byte for byte with
// the other and with what MySQL holds (read through the binary protocol,
// which has the exact FLOAT and DOUBLE). Keys built from binary columns
// reach an L1 subscriber exactly.
func TestValueEncoding(t *testing.T) {
	if testing.Short() {
		bigBlob = 1 << 20
	}
	if sharedCluster != nil && bigBlob > 8<<20 {
		// The script writing a 64 MiB value (JSON, hash, mirror: several
		// copies) kept a master busy past testenv's cluster-node-timeout
		// (2 s) under -race on 2 loaded cores: the other nodes failed it
		// over and the test read CLUSTERDOWN. 8 MiB is still a large value
		// through the snapshot, the binlog and one script call.
		bigBlob = 8 << 20
	}
	admin := openDB(t, sharedMariaDB, "")
	var packet int64
	if err := admin.QueryRow("SELECT @@GLOBAL.max_allowed_packet").Scan(&packet); err != nil {
		t.Fatal(err)
	}
	if packet < int64(4*bigBlob) {
		if _, err := admin.Exec(fmt.Sprintf("SET GLOBAL max_allowed_packet = %d", 4*bigBlob)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Exec(fmt.Sprintf("SET GLOBAL max_allowed_packet = %d", packet)) })
	}
	e := newEnv(t, nil, nil)
	var ddl []string
	for _, c := range valueCols {
		ddl = append(ddl, c.name+" "+c.ddl)
	}
	for _, tbl := range []string{"snap", "stream"} {
		e.exec("CREATE TABLE " + tbl + " (" + strings.Join(ddl, ", ") + ") CHARACTER SET utf8mb4")
	}
	var ins []string
	rows := valueRows()
	for i, vals := range rows {
		if len(vals) != len(valueCols)-1 {
			t.Fatalf("valueRows[%d] has %d values for %d columns", i, len(vals), len(valueCols)-1)
		}
		ins = append(ins, fmt.Sprintf("(%d, %s)", i+1, strings.Join(vals, ", ")))
	}
	e.tx("SET time_zone = '+08:00'", "INSERT INTO snap VALUES "+strings.Join(ins, ", "))

	rules := valueRules(e, "snap")
	rules = append(rules, valueRules(e, "stream")...)
	inv := []string{e.p + "inv:vb:{vb}", e.p + "inv:vc:{vc}", e.p + "inv:l1:{l1}", e.p + "inv:bn:{bn}"}
	rules = append(rules, sink.RuleConfig{Table: e.schema + ".stream", Kind: sink.KindInvalidate, Keys: inv})
	// With the defaults (1 s heartbeat, 3 s lease) the 64 MiB row failed
	// under -race on a 2-core machine (it passed without -race): the
	// binlog watchdog, which only resets between events, closed the
	// connection while the row's event was still arriving, again on every
	// reconnect; and the script applying the row kept Redis busy past the
	// lease, so the leader stepped down.
	e.leaseTTL = 30 * time.Second
	r := e.start(rules, func(b *binlog.Config, _ *sink.Config) { b.Heartbeat = 20 * time.Second })

	// An L1 subscriber records the keys the invalidation messages name.
	var mu sync.Mutex
	announced := map[string]bool{}
	cc := cache.Config{}
	cc.SetDefaults()
	l1, err := cache.New(cc, e.rdb, e.ks, e.chann, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	l1.Listen(func(keys []string, flush bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range keys {
			announced[k] = true
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	l1done := make(chan struct{})
	go func() { defer close(l1done); _ = l1.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-l1done })

	r.readyWithin(t, 3*time.Minute) // 64 MiB values, -race, a loaded box: tens of seconds
	e.sync(r)
	waitFor(t, func() error {
		if !l1.Live() {
			return errors.New("L1 subscriber not live")
		}
		return nil
	}, 10*time.Second)
	e.exec("INSERT INTO stream SELECT * FROM snap")
	e.sync(r)

	mysql := readExact(t, e, "snap")
	var wantKeys []string // the invalidations the stream must announce
	for _, id := range slices.Sorted(maps.Keys(mysql)) {
		row := mysql[id]
		want := expectValues(row)
		snap := readValues(t, e, "snap", id)
		stream := readValues(t, e, "stream", id)
		if snap["json"] != stream["json"] {
			t.Errorf("row %d: JSON of snapshot and stream differ: %s", id, diff(snap["json"], stream["json"]))
		}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			w, s, st := want[k], snap[k], stream[k]
			if s != st {
				t.Errorf("row %d %s: snapshot and stream differ: %s", id, k, diff(s, st))
			}
			if !w.equal(s) {
				t.Errorf("row %d %s: snapshot %s, MySQL has %s", id, k, s, w)
			}
			if !w.equal(st) {
				t.Errorf("row %d %s: stream %s, MySQL has %s", id, k, st, w)
			}
		}
		// Keys named by templates (binary ones included) exist.
		for _, c := range []string{"vb", "vc", "l1", "bn"} {
			v, ok := row[c]
			if !ok {
				continue
			}
			for _, tbl := range []string{"snap", "stream"} {
				key := e.p + tbl + ":key:" + c + ":" + string(v.hash)
				if got, err := e.rdb.Get(context.Background(), key).Result(); err != nil || got != strconv.Itoa(id) {
					t.Errorf("row %d: key %q holds %q (%v), want %d", id, key, got, err, id)
				}
			}
			wantKeys = append(wantKeys, e.p+"inv:"+c+":"+string(v.hash))
		}
	}
	// The invalidation messages named the keys exactly.
	var missing []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		missing = missing[:0]
		for _, k := range wantKeys {
			if !announced[k] {
				missing = append(missing, fmt.Sprintf("%q", k))
			}
		}
		mu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(missing) > 0 {
		mu.Lock()
		var got []string
		for k := range announced {
			if strings.HasPrefix(k, e.p+"inv:") {
				got = append(got, fmt.Sprintf("%q", k))
			}
		}
		mu.Unlock()
		slices.Sort(got)
		t.Errorf("invalidations not received: %s\n\treceived: %s", strings.Join(missing, " "), strings.Join(got, " "))
	}
}

// valueRules stores every column of table in every form: rewrite json and
// hash, a mirror per column, a member-hash entry per column (the template
// text), and keys named by some columns.
func valueRules(e *env, table string) []sink.RuleConfig {
	tbl, p := e.schema+"."+table, e.p+table+":"
	rules := []sink.RuleConfig{
		{Table: tbl, Kind: sink.KindRewrite, Key: p + "json:{id}"},
		{Table: tbl, Kind: sink.KindRewrite, Key: p + "hash:{id}", Format: "hash"},
	}
	for _, c := range valueCols[1:] {
		rules = append(rules, sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: p + "m:" + c.name + ":{id}", Column: c.name})
		if c.name != "lb" { // 64 MiB in a template costs time and shows nothing bl does not
			rules = append(rules, sink.RuleConfig{Table: tbl, Kind: sink.KindMember, Key: p + "tpl:{id}", Member: c.name, Value: "{" + c.name + "}"})
		}
	}
	for _, c := range []string{"vb", "vc", "l1", "bn"} {
		rules = append(rules, sink.RuleConfig{Table: tbl, Kind: sink.KindMirror, Key: p + "key:" + c + ":{" + c + "}", Column: "id"})
	}
	return rules
}

// exactValue is one column as MySQL holds it: its text in a hash, mirror
// or template (raw bytes for binary columns) and its JSON value.
type exactValue struct {
	hash []byte
	json any // json.Number, string, or nil (null)
}

// readExact reads table through the binary protocol (a prepared
// statement), at time_zone UTC, keyed by id.
func readExact(t *testing.T, e *env, table string) map[int]map[string]exactValue {
	t.Helper()
	ctx := context.Background()
	conn, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET time_zone = '+00:00'"); err != nil {
		t.Fatal(err)
	}
	stmt, err := conn.PrepareContext(ctx, "SELECT * FROM "+table+" WHERE id > ?")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	rows, err := stmt.QueryContext(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]map[string]exactValue{}
	vals := make([]any, len(valueCols))
	ptrs := make([]any, len(vals))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := map[string]exactValue{}
		for i, c := range valueCols {
			if vals[i] == nil {
				continue
			}
			var text []byte
			switch v := vals[i].(type) {
			case int64:
				text = strconv.AppendInt(nil, v, 10)
			case float32:
				text = strconv.AppendFloat(nil, float64(v), 'g', -1, 32)
			case float64:
				text = strconv.AppendFloat(nil, v, 'g', -1, 64)
			case []byte:
				text = bytes.Clone(v)
			case string:
				text = []byte(v)
			default:
				t.Fatalf("column %s: unexpected %T from the binary protocol", c.name, v)
			}
			var x exactValue
			switch c.kind {
			case kNum:
				x = exactValue{text, json.Number(text)}
			case kText:
				x = exactValue{text, string(text)}
			case kBin:
				x = exactValue{text, base64.StdEncoding.EncodeToString(text)}
			case kBit:
				n := binary.BigEndian.Uint64(append(make([]byte, 8-len(text)), text...))
				s := strconv.FormatUint(n, 10)
				x = exactValue{[]byte(s), json.Number(s)}
			}
			row[c.name] = x
		}
		id, _ := strconv.Atoi(string(row["id"].hash))
		out[id] = row
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n := len(valueRows()); len(out) != n {
		t.Fatalf("read %d rows of %s, want %d", len(out), table, n)
	}
	return out
}

// stored is what Redis holds under one name: s is a string value (or a
// hash field), ok false when there is none.
type stored struct {
	s  string
	ok bool
}

func (s stored) String() string {
	if !s.ok {
		return "(none)"
	}
	return describe(s.s)
}

func describe(s string) string {
	if len(s) > 200 {
		return fmt.Sprintf("%q… (%d bytes)", s[:200], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func diff(a, b stored) string {
	if a.ok != b.ok || len(a.s) != len(b.s) {
		return a.String() + " vs " + b.String()
	}
	for i := range a.s {
		if a.s[i] != b.s[i] {
			from := max(0, i-20)
			return fmt.Sprintf("first difference at byte %d of %d: %q vs %q", i, len(a.s), a.s[from:min(len(a.s), i+20)], b.s[from:min(len(b.s), i+20)])
		}
	}
	return "equal"
}

// want is one expectation: text for a string or hash field, or the JSON
// value of a column: its exact text when the kind fixes it (raw), else
// its decoded value.
type want struct {
	text *string
	json any
	raw  string
	col  string // for JSON: the column of the object
}

func (w want) String() string {
	if w.col != "" {
		return fmt.Sprintf("JSON %s = %s", w.col, describe(fmt.Sprint(w.json)))
	}
	if w.text == nil {
		return "(none)"
	}
	return describe(*w.text)
}

func (w want) equal(s stored) bool {
	if w.col != "" {
		if !s.ok {
			return false
		}
		if w.raw != "" {
			return s.s == w.raw
		}
		dec := json.NewDecoder(strings.NewReader(s.s))
		dec.UseNumber()
		var v any
		return dec.Decode(&v) == nil && v == w.json
	}
	if w.text == nil {
		return !s.ok
	}
	return s.ok && s.s == *w.text
}

// expectValues derives, per name ("json.<col>", "hash.<col>",
// "m.<col>", "tpl.<col>"), what Redis must hold for row.
func expectValues(row map[string]exactValue) map[string]want {
	w := map[string]want{}
	for _, c := range valueCols {
		x, ok := row[c.name]
		j := want{col: c.name, json: x.json}
		switch v := x.json.(type) {
		case nil:
			j.raw = "null"
		case json.Number:
			j.raw = string(v)
		case string:
			if c.kind == kBin {
				j.raw = `"` + v + `"`
			}
		}
		w["json."+c.name] = j
		if c.name == "id" {
			continue
		}
		var text *string
		if ok {
			s := string(x.hash)
			text = &s
		}
		w["hash."+c.name] = want{text: text}
		w["m."+c.name] = want{text: text}
		if c.name != "lb" {
			w["tpl."+c.name] = want{text: text}
		}
	}
	return w
}

// readValues reads what Redis holds for row id of table, named as
// expectValues names it.
func readValues(t *testing.T, e *env, table string, id int) map[string]stored {
	t.Helper()
	ctx := context.Background()
	p := e.p + table + ":"
	get := func(key string) stored {
		v, err := e.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			return stored{}
		}
		if err != nil {
			t.Fatal(err)
		}
		return stored{v, true}
	}
	hget := func(key string) map[string]string {
		h, err := e.rdb.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	out := map[string]stored{}
	js := get(p + "json:" + strconv.Itoa(id))
	out["json"] = js
	var obj map[string]json.RawMessage
	if js.ok {
		if err := json.Unmarshal([]byte(js.s), &obj); err != nil {
			t.Errorf("%s:json:%d is not a JSON object: %v", table, id, err)
		}
	}
	hash := hget(p + "hash:" + strconv.Itoa(id))
	tpl := hget(p + "tpl:" + strconv.Itoa(id))
	for _, c := range valueCols {
		raw, ok := obj[c.name]
		out["json."+c.name] = stored{string(raw), ok}
		if c.name == "id" {
			continue
		}
		h, ok := hash[c.name]
		out["hash."+c.name] = stored{h, ok}
		out["m."+c.name] = get(p + "m:" + c.name + ":" + strconv.Itoa(id))
		v, ok := tpl[c.name]
		out["tpl."+c.name] = stored{v, ok}
	}
	return out
}
