package binlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// runUntil runs a Source with cfg from start and returns what Run returned
// within wait, or fails the test if it still runs then.
func runUntil(t *testing.T, cfg Config, start Start, wait time.Duration) (*Source, error) {
	t.Helper()
	cfg.SetDefaults()
	src := NewSource(cfg, "mariadb", nil, zerolog.Nop(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, start, make(chan *Txn, 100)) }()
	select {
	case err := <-done:
		return src, err
	case <-time.After(wait):
		cancel()
		<-done
		t.Fatalf("Run still retrying after %s (last error: %v), want a fatal error", wait, src.LastError())
		return nil, nil
	}
}

// Errors no reconnect can cure end Run at once, recognised by the
// server's error number; LastError keeps them.
func TestRunFatalErrors(t *testing.T) {
	admin := mariadb.DB(t, "")
	for _, q := range []string{
		"DROP USER IF EXISTS 'norepl'@'%'", "CREATE USER 'norepl'@'%' IDENTIFIED BY 'pw'", "GRANT SELECT ON *.* TO 'norepl'@'%'",
		"DROP USER IF EXISTS 'locked'@'%'", "CREATE USER 'locked'@'%' IDENTIFIED BY 'pw' ACCOUNT LOCK",
		"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'locked'@'%'",
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	purgedPos, purgedGTID := purgeBinlogs(t)
	cfg := Config{Addr: mariadb.Addr(), User: "root", Flavor: "mariadb", ServerID: 7101}
	cur, err := CurrentPosition(context.Background(), admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		user   string
		pw     string
		start  Start
		code   uint16
		purged bool
	}{
		{"wrong password", "root", "wrong", Start{Pos: cur}, mysql.ER_ACCESS_DENIED_ERROR, false},
		// MariaDB refuses COM_REGISTER_SLAVE with 1045, MySQL with 1227.
		{"no REPLICATION SLAVE", "norepl", "pw", Start{Pos: cur}, mysql.ER_ACCESS_DENIED_ERROR, false},
		{"account locked", "locked", "pw", Start{Pos: cur}, erAccountLockedMariaDB, false},
		{"purged file", "root", "", Start{Pos: purgedPos}, mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, true},
		{"purged gtid", "root", "", Start{GTID: purgedGTID}, mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.User, c.Password = tc.user, tc.pw
			src, err := runUntil(t, c, tc.start, 5*time.Second)
			t.Logf("Run = %v", err)
			var me *mysql.MyError
			switch {
			case !errors.Is(err, ErrFatal):
				t.Fatalf("Run = %v, want ErrFatal", err)
			case errors.Is(err, ErrPurged) != tc.purged:
				t.Errorf("Run = %v: ErrPurged %v, want %v", err, errors.Is(err, ErrPurged), tc.purged)
			case !errors.As(err, &me) || me.Code != tc.code:
				t.Errorf("Run = %v, want server error %d", err, tc.code)
			}
			if got := src.LastError(); got != err {
				t.Errorf("LastError() = %v, want what Run returned", got)
			}
			if src.Connected() {
				t.Error("Connected() after a fatal error")
			}
		})
	}
}

// purgeBinlogs rotates the binlog and purges every earlier file; it
// returns a position and a GTID set that only the purged files had.
func purgeBinlogs(t *testing.T) (Position, string) {
	t.Helper()
	db := freshDB(t, "purgetest")
	if _, err := db.Exec("CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	old, err := CurrentPosition(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("FLUSH BINARY LOGS"); err != nil {
		t.Fatal(err)
	}
	cur, err := CurrentPosition(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	// A file a dump thread still reads is kept: the last test's may
	// linger for a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := db.Exec("PURGE BINARY LOGS TO '" + cur.File + "'"); err != nil {
			t.Fatal(err)
		}
		var first string
		if err := db.QueryRow("SHOW BINARY LOGS").Scan(&first, new(any)); err != nil {
			t.Fatal(err)
		}
		if first == cur.File {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("binlog %s still there after PURGE BINARY LOGS TO '%s'", first, cur.File)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return old, "0-1-1"
}

// A server that is not there is retried, not fatal, and LastError says
// why meanwhile.
func TestRunRetriesUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	cfg := Config{Addr: addr, User: "root", Flavor: "mariadb", ServerID: 7102}
	cfg.SetDefaults()
	src := NewSource(cfg, "mariadb", nil, zerolog.Nop(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, Start{Pos: Position{"binlog.000001", 4}}, make(chan *Txn)) }()
	deadline := time.Now().Add(5 * time.Second)
	for src.LastError() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := src.LastError(); err == nil || !strings.Contains(err.Error(), "refused") || errors.Is(err, ErrFatal) {
		t.Errorf("LastError() = %v, want a retried connection refused", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while the server is unreachable, want retries", err)
	case <-time.After(time.Second):
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
}

// classify goes by error number: the texts are MySQL's, which no server
// here can produce.
func TestClassify(t *testing.T) {
	start := Start{Pos: Position{"binlog.000042", 4}}
	e1236 := func(msg string) error {
		return fmt.Errorf("start binlog dump: %w", &mysql.MyError{Code: mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, State: "HY000", Message: msg})
	}
	for _, tc := range []struct {
		name          string
		err           error
		fatal, purged bool
	}{
		{"MySQL 8.0.23+ purged GTIDs", e1236("Cannot replicate because the source purged required binary logs. Replicate the missing " +
			"transactions from elsewhere, or provision a new replica from backup. Consider increasing the source's binary log expiration " +
			"period. The GTID set sent by the replica is '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5', and the missing transactions are " +
			"'3e11fa47-71ca-11e1-9e33-c80aa9429562:6-9'"), true, true},
		{"MySQL 5.7 purged GTIDs", e1236("The slave is connecting using CHANGE MASTER TO MASTER_AUTO_POSITION = 1, but the master " +
			"has purged binary logs containing GTIDs that the slave requires."), true, true},
		{"purged file", e1236("Could not find first log file name in binary log index file"), true, true},
		{"next file purged", e1236("could not find next log; the first event 'binlog.000001' at 4, the last event read from " +
			"'./binlog.000002' at 256, the last byte read from './binlog.000002' at 256."), true, true},
		{"MariaDB GTID not in binlog", e1236("Error: connecting slave requested to start from GTID 0-1-99, which is not in the master's binlog"), true, true},
		{"MySQL 8 zombie dump thread", e1236("A replica with the same server_uuid/server_id as this replica has connected to the source; " +
			"the first event 'binlog.000001' at 4, the last event read from './binlog.000001' at 126"), false, false},
		{"MySQL 5.7 zombie dump thread", e1236("A slave with the same server_uuid/server_id as this slave has connected to the master"), false, false},
		{"event too large", e1236("log event entry exceeded max_allowed_packet; Increase max_allowed_packet on master"), true, false},
		{"wrong password", &mysql.MyError{Code: mysql.ER_ACCESS_DENIED_ERROR, Message: "Access denied for user 'cdc'@'10.0.0.2' (using password: YES)"}, true, false},
		{"no REPLICATION SLAVE", &mysql.MyError{Code: mysql.ER_SPECIFIC_ACCESS_DENIED_ERROR, Message: "Access denied; you need (at least one of) the REPLICATION SLAVE privilege(s) for this operation"}, true, false},
		{"no table privilege", &mysql.MyError{Code: mysql.ER_TABLEACCESS_DENIED_ERROR, Message: "SELECT command denied to user 'cdc'@'%' for table 'user'"}, true, false},
		{"no database privilege", &mysql.MyError{Code: mysql.ER_DBACCESS_DENIED_ERROR, Message: "Access denied for user 'cdc'@'%' to database 'shop'"}, true, false},
		{"MySQL account locked", &mysql.MyError{Code: erAccountLockedMySQL, Message: "Access denied for user 'cdc'@'%'. Account is locked."}, true, false},
		{"too many connections", &mysql.MyError{Code: mysql.ER_CON_COUNT_ERROR, Message: "Too many connections"}, false, false},
		{"server shutting down", &mysql.MyError{Code: mysql.ER_SERVER_SHUTDOWN, Message: "Server shutdown in progress"}, false, false},
		{"connection lost", fmt.Errorf("read packet: %w", io.ErrUnexpectedEOF), false, false},
		{"already fatal", fmt.Errorf("%w: row of t has 2 values for 3 named columns", ErrFatal), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, start)
			if errors.Is(got, ErrFatal) != tc.fatal || errors.Is(got, ErrPurged) != tc.purged {
				t.Errorf("classify(%v) = %v: fatal %v purged %v, want %v %v", tc.err, got,
					errors.Is(got, ErrFatal), errors.Is(got, ErrPurged), tc.fatal, tc.purged)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("classify(%v) = %v, which does not wrap it", tc.err, got)
			}
			if tc.purged && !strings.Contains(got.Error(), "binlog.000042:4") {
				t.Errorf("classify(%v) = %v, which does not name the start", tc.err, got)
			}
		})
	}
	if classify(nil, start) != nil {
		t.Error("classify(nil) != nil")
	}
}

// TestClockOffset: MariaDB runs on this host, so its clock is ours, within
// the query's round trip.
func TestClockOffset(t *testing.T) {
	db := freshDB(t, "clocktest")
	off, err := ClockOffset(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if off < -time.Second || off > time.Second {
		t.Fatalf("ClockOffset = %v on the same host, want within 1 s", off)
	}
}
