package testenv

import (
	"bufio"
	"database/sql"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMariaDB(t *testing.T) {
	t.Parallel()
	start := time.Now()
	m := StartMariaDB(t)
	t.Logf("MariaDB ready on %s in %v", m.Addr(), time.Since(start).Round(time.Millisecond))

	db := m.DB(t, "testenv")
	mustExec(t, db, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
	mustExec(t, db, "INSERT INTO t VALUES (1, 'one'), (2, 'two')")

	var file, pos, doDB, ignoreDB string
	if err := db.QueryRow("SHOW MASTER STATUS").Scan(&file, &pos, &doDB, &ignoreDB); err != nil {
		t.Fatalf("SHOW MASTER STATUS: %v", err)
	}
	if !strings.HasPrefix(file, "binlog.") {
		t.Errorf("SHOW MASTER STATUS: binlog file %q, want binlog.NNNNNN", file)
	}
	for name, want := range map[string]string{
		"@@binlog_format":       "ROW",
		"@@binlog_row_image":    "FULL",
		"@@binlog_row_metadata": "FULL",
		"@@server_id":           "1",
		"@@log_bin":             "1",
	} {
		if got := queryString(t, db, "SELECT "+name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if !binlogHas(t, db, file, "Write_rows") {
		t.Errorf("binlog %s has no Write_rows event after an INSERT", file)
	}

	// A crash keeps committed data, and the server comes back on the same port.
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := db.Ping(); err == nil {
		t.Fatal("Ping succeeded after Kill")
	}
	start = time.Now()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("MariaDB restarted after Kill in %v", time.Since(start).Round(time.Millisecond))
	if got := queryString(t, db, "SELECT GROUP_CONCAT(v ORDER BY id) FROM t"); got != "one,two" {
		t.Errorf("after Kill+Start: rows %q, want %q", got, "one,two")
	}

	// So does a graceful restart.
	mustExec(t, db, "INSERT INTO t VALUES (3, 'three')")
	start = time.Now()
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("MariaDB stopped in %v", time.Since(start).Round(time.Millisecond))
	if err := m.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err == nil {
		t.Error("Start of a running server succeeded")
	}
	if got := queryString(t, db, "SELECT COUNT(*) FROM t"); got != "3" {
		t.Errorf("after Stop+Start: %s rows, want 3", got)
	}

	m.Close()
	m.Close()
	if _, err := os.Stat(m.DataDir); !os.IsNotExist(err) {
		t.Errorf("data directory %s still there after Close: %v", m.DataDir, err)
	}
	if err := m.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestMariaDBDSN(t *testing.T) {
	m := &MariaDB{Host: "127.0.0.1", Port: 3307, User: "root"}
	want := "root@tcp(127.0.0.1:3307)/app?multiStatements=true&parseTime=true&interpolateParams=true"
	if got := m.DSN("app"); got != want {
		t.Errorf("DSN = %q, want %q", got, want)
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := StartRedis(t)
	t.Logf("Redis ready on %s in %v", r.Addr(), time.Since(start).Round(time.Millisecond))

	if got := redisDo(t, r.Addr(), "SET", "k", "v"); got != "+OK" {
		t.Fatalf("SET: %q", got)
	}
	if got := redisDo(t, r.Addr(), "GET", "k"); got != "v" {
		t.Fatalf("GET = %q, want v", got)
	}

	// A restart loses all data: there is no persistence.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if got := redisDo(t, r.Addr(), "GET", "k"); got != "(nil)" {
		t.Errorf("GET after Kill+Start = %q, want (nil)", got)
	}
	redisDo(t, r.Addr(), "SET", "k", "v")
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if got := redisDo(t, r.Addr(), "GET", "k"); got != "(nil)" {
		t.Errorf("GET after Stop+Start = %q, want (nil)", got)
	}
	if got := redisDo(t, r.Addr(), "CONFIG", "GET", "save"); got != "save," {
		t.Errorf("CONFIG GET save = %q, want no save points", got)
	}

	r.Close()
	r.Close()
	if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Close: %v", r.Dir, err)
	}
}

func TestLookBinaryMissing(t *testing.T) {
	_, err := LookBinary("no-such-server-binary", "no-such-package")
	want := `no-such-server-binary not found: install the Debian package no-such-package (sudo apt-get install no-such-package) or run "make test", which installs it`
	if err == nil || err.Error() != want {
		t.Errorf("LookBinary error = %v, want %q", err, want)
	}
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("FreePort gave %d, which cannot be bound: %v", p, err)
	}
	l.Close()
}

func mustExec(t *testing.T, db *sql.DB, query string) {
	t.Helper()
	if _, err := db.Exec(query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func queryString(t *testing.T, db *sql.DB, query string) string {
	t.Helper()
	var s sql.NullString
	if err := db.QueryRow(query).Scan(&s); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return s.String
}

// binlogHas reports whether binlog file has an event of type eventType.
func binlogHas(t *testing.T, db *sql.DB, file, eventType string) bool {
	t.Helper()
	rows, err := db.Query("SHOW BINLOG EVENTS IN '" + file + "'")
	if err != nil {
		t.Fatalf("SHOW BINLOG EVENTS: %v", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	found := false
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for i, c := range cols {
			if c == "Event_type" && strings.HasPrefix(string(vals[i]), eventType) {
				found = true
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return found
}

// redisDo sends one command over a new connection and returns the reply: a
// simple string or error with its +/- prefix, a bulk string's contents,
// "(nil)" for a null bulk string, or an array's elements joined by commas.
func redisDo(t *testing.T, addr string, args ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var cmd strings.Builder
	fmt.Fprintf(&cmd, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&cmd, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(cmd.String())); err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	br := bufio.NewReader(c)
	var read func() string
	read = func() string {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("redis %v: %v", args, err)
		}
		line = strings.TrimSuffix(line, "\r\n")
		switch line[0] {
		case '$':
			var n int
			fmt.Sscan(line[1:], &n)
			if n < 0 {
				return "(nil)"
			}
			buf := make([]byte, n+2)
			if _, err := io.ReadFull(br, buf); err != nil {
				t.Fatalf("redis %v: %v", args, err)
			}
			return string(buf[:n])
		case '*':
			var n int
			fmt.Sscan(line[1:], &n)
			elems := make([]string, n)
			for i := range elems {
				elems[i] = read()
			}
			return strings.Join(elems, ",")
		default:
			return line
		}
	}
	return read()
}
