package binlog

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPositionOfGTID: the server resolves a GTID state to where the first
// transaction after it begins, in the same file or after a rotation, and,
// with none after it yet, to where its dump reached; CheckPosition accepts
// those and the end of a file, and refuses an offset inside an event or a
// transaction.
func TestPositionOfGTID(t *testing.T) {
	db := freshDB(t, "locate")
	ctx := context.Background()
	cfg := Config{Addr: mariadb.Addr(), User: "root", ServerID: 7002}
	cfg.SetDefaults()
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// stateAt is the GTID state after the transactions before pos.
	stateAt := func(p Position) string {
		t.Helper()
		var g string
		if err := db.QueryRow("SELECT BINLOG_GTID_POS(?, ?)", p.File, p.Pos).Scan(&g); err != nil || g == "" {
			t.Fatalf("BINLOG_GTID_POS(%s) = %q, %v", p, g, err)
		}
		return g
	}
	current := func() Position {
		t.Helper()
		p, err := CurrentPosition(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	resolve := func(g string, want Position) {
		t.Helper()
		got, err := PositionOfGTID(ctx, cfg, "mariadb", g, 10*time.Second)
		if err != nil || got != want {
			t.Fatalf("PositionOfGTID(%s) = %s, %v; want %s", g, got, err, want)
		}
		if err := CheckPosition(ctx, db, got); err != nil {
			t.Errorf("CheckPosition(%s): %v", got, err)
		}
	}

	exec("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
	exec("INSERT INTO t VALUES (1, 1)")
	p := current()
	g := stateAt(p)
	resolve(g, p) // nothing after it yet: where the dump reached
	exec("INSERT INTO t VALUES (2, 2)")
	resolve(g, p) // the next transaction's start

	// After a rotation: the first transaction of the new file.
	exec("FLUSH BINARY LOGS")
	end := current()
	exec("INSERT INTO t VALUES (3, 3)")
	var first Position
	rows, err := db.Query("SHOW BINLOG EVENTS IN '" + end.File + "'")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var file, typ, info string
		var at, sid, next uint64
		if err := rows.Scan(&file, &at, &typ, &sid, &next, &info); err != nil {
			t.Fatal(err)
		}
		if typ == "Gtid" && first.File == "" {
			first = Position{File: file, Pos: uint32(at)}
		}
	}
	rows.Close()
	resolve(stateAt(end), first)

	if err := CheckPosition(ctx, db, Position{File: p.File, Pos: p.Pos + 1}); err == nil || !strings.Contains(err.Error(), "not the start of an event") {
		t.Errorf("CheckPosition inside an event: %v", err)
	}
	var inside uint64
	if err := db.QueryRow(fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d LIMIT 1", first.File, first.Pos)).Scan(new(string), new(uint64), new(string), new(uint64), &inside, new(string)); err != nil {
		t.Fatal(err)
	}
	if err := CheckPosition(ctx, db, Position{File: first.File, Pos: uint32(inside)}); err == nil || !strings.Contains(err.Error(), "inside a transaction") {
		t.Errorf("CheckPosition after a transaction's first event: %v", err)
	}
	logs, err := BinaryLogs(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range logs { // the end of every file, the closed ones included
		if err := CheckPosition(ctx, db, Position{File: l.File, Pos: uint32(l.Size)}); err != nil {
			t.Errorf("CheckPosition at the end of %s: %v", l.File, err)
		}
	}
	if _, err := PositionOfGTID(ctx, cfg, "mariadb", "not-a-gtid", time.Second); err == nil {
		t.Error("PositionOfGTID accepted a malformed set")
	}
}
