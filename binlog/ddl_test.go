package binlog

import (
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/rs/zerolog"
)

func TestDescribeStatement(t *testing.T) {
	for _, c := range []struct{ q, schema, kind, table string }{
		{"ALTER TABLE items ADD COLUMN x INT", "shop", "ALTER TABLE", "shop.items"},
		{"alter online table `Shop`.`It``ems` drop x", "", "ALTER TABLE", "shop.it`ems"},
		{"CREATE TABLE IF NOT EXISTS a.b (id int)", "x", "CREATE TABLE", "a.b"},
		{"DROP TABLE IF EXISTS t", "s", "DROP TABLE", "s.t"},
		{"CREATE USER 'u'@'%' IDENTIFIED BY 'sekret'", "s", "CREATE USER", ""},
		{"GRANT ALL ON *.* TO 'u'@'%' IDENTIFIED BY 'sekret'", "s", "GRANT", ""},
		{"UPDATE items SET name = 'private' WHERE id = 1", "s", "UPDATE", ""},
		{"/* comment */ DROP TABLE t", "s", "other", ""},
	} {
		kind, table := describeStatement(c.q, c.schema)
		if kind != c.kind || table != c.table {
			t.Errorf("describeStatement(%q) = %q, %q; want %q, %q", c.q, kind, table, c.kind, c.table)
		}
		if strings.Contains(kind+table, "sekret") || strings.Contains(kind+table, "private") {
			t.Errorf("describeStatement(%q) leaks the statement's text", c.q)
		}
	}
}

// TestStatementsNotLogged: passwords in DDL (CREATE USER … IDENTIFIED BY,
// in the binlog in clear) and statement-format DML (customer data) never
// reach the log; DDL of a ruled schema is logged as kind and table.
// Before, every DDL's first 200 characters and the DML text were logged.
func TestStatementsNotLogged(t *testing.T) {
	db := freshDB(t, "leak")
	if _, err := db.Exec("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40))"); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	e := startSourceLog(t, mariadb, db, 1000, zerolog.New(logs), "leak.t")
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{
		"CREATE USER 'leaky'@'%' IDENTIFIED BY 'sekret-pw-1'",
		"DROP USER 'leaky'@'%'",
		"ALTER TABLE t ADD COLUMN x INT",
		"SET SESSION binlog_format = 'STATEMENT'",
		"INSERT INTO t (id, name) VALUES (1, 'private-name-2')",
		"SET SESSION binlog_format = 'ROW'",
	} {
		if _, err := conn.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e.exec("INSERT INTO t (id, name) VALUES (2, 'marker')")
	deadline := time.Now().Add(10 * time.Second)
	for {
		txn := e.next()
		if len(txn.Changes) > 0 && txn.Changes[0].After[0] == int32(2) || time.Now().After(deadline) {
			break
		}
	}
	out := logs.String()
	for _, secret := range []string{"sekret-pw-1", "private-name-2", "IDENTIFIED"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, `"statement":"ALTER TABLE","table":"leak.t"`) {
		t.Errorf("no DDL line naming ALTER TABLE leak.t:\n%s", out)
	}
	if !strings.Contains(out, `"statement":"INSERT"`) {
		t.Errorf("no warning about the statement-format INSERT:\n%s", out)
	}
}
