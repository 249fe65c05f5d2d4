package binlog

import (
	"context"
	"database/sql"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The position ReadConsistent returns is its snapshot's exactly, on both
// paths — the position MariaDB reports, and the lock MySQL needs (forced
// here on MariaDB) — while writers hammer inserts, and while commits stand
// in the window MySQL's group commit has between writing the binlog and
// committing in InnoDB: every committed row is either in the snapshot or
// streamed from its position, never neither (lost) nor both.
//
// The window is held open with semi-sync replication waiting AFTER_SYNC
// with no replica to acknowledge: a commit then waits, up to the timeout,
// after its transaction is in the binlog (SHOW MASTER STATUS counts it)
// and before InnoDB shows it. After a timeout the server turns semi-sync
// off, so each round turns it on again, waits until a commit stands in the
// window, and snapshots.
func TestReadConsistentPosition(t *testing.T) {
	admin := mariadb.DB(t, "")
	set := func(qs ...string) {
		t.Helper()
		for _, q := range qs {
			if _, err := admin.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	set("SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC", "SET GLOBAL rpl_semi_sync_master_timeout = 500",
		"SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON")
	t.Cleanup(func() {
		set("SET GLOBAL rpl_semi_sync_master_enabled = OFF", "SET GLOBAL rpl_semi_sync_master_wait_point = DEFAULT",
			"SET GLOBAL rpl_semi_sync_master_timeout = DEFAULT")
	})
	for _, tc := range []struct {
		name string
		mode positionMode
	}{
		{"reported", positionAuto},
		{"locked", positionLocked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const rounds = 5
			name := "consistent_" + tc.name
			db := freshDB(t, name)
			if _, err := db.Exec("CREATE TABLE t (id BIGINT PRIMARY KEY, w INT)"); err != nil {
				t.Fatal(err)
			}
			w := startWriters(t, db, 4)
			type snap struct {
				pos  Position
				rows map[int64]bool
			}
			var snaps []snap
			for round := range rounds {
				set("SET GLOBAL rpl_semi_sync_master_enabled = OFF", "SET GLOBAL rpl_semi_sync_master_enabled = ON")
				waitStalledCommit(t, admin)
				s := snap{rows: map[int64]bool{}}
				var err error
				s.pos, err = readConsistent(context.Background(), db, tc.mode, func(conn *sql.Conn, _ Position) error {
					rows, err := conn.QueryContext(context.Background(), "SELECT id FROM t")
					if err != nil {
						return err
					}
					defer rows.Close()
					for rows.Next() {
						var id int64
						if err := rows.Scan(&id); err != nil {
							return err
						}
						s.rows[id] = true
					}
					return rows.Err()
				})
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				snaps = append(snaps, s)
				// Past the semi-sync timeout: the stalled commits go
				// through and the writers run at full speed for a while.
				time.Sleep(700 * time.Millisecond)
			}
			set("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
			committed := w.stop()
			if _, err := db.Exec("INSERT INTO t VALUES (0, -1)"); err != nil { // the end marker
				t.Fatal(err)
			}
			t.Logf("%d rows committed by the writers", len(committed))
			for i, s := range snaps {
				streamed := streamInserts(t, s.pos, name+".t")
				var lost, both []int64
				for _, id := range committed {
					switch in, after := s.rows[id], streamed[id]; {
					case !in && !after:
						lost = append(lost, id)
					case in && after:
						both = append(both, id)
					}
				}
				if len(lost) > 0 {
					t.Errorf("snapshot %d at %s: %d committed rows neither in the snapshot nor streamed from its position, e.g. %v",
						i, s.pos, len(lost), lost[:min(5, len(lost))])
				}
				if len(both) > 0 {
					t.Errorf("snapshot %d at %s: %d rows both in the snapshot and streamed from its position, e.g. %v",
						i, s.pos, len(both), both[:min(5, len(both))])
				}
			}
		})
	}
}

// waitStalledCommit waits until a commit waits for a semi-sync
// acknowledgement.
func waitStalledCommit(t *testing.T, admin *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		if err := admin.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for semi-sync ACK%'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no commit waited for a semi-sync acknowledgement within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writers insert rows with increasing ids, one per transaction, from
// several connections, and remember which committed.
type writers struct {
	t     *testing.T
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	ids   []int64
}

func startWriters(t *testing.T, db *sql.DB, n int) *writers {
	w := &writers{t: t, stopc: make(chan struct{})}
	var next atomic.Int64
	for i := range n {
		w.wg.Go(func() {
			for {
				select {
				case <-w.stopc:
					return
				default:
				}
				id := next.Add(1)
				if _, err := db.Exec("INSERT INTO t VALUES (?, ?)", id, i); err != nil {
					t.Errorf("insert %d: %v", id, err)
					return
				}
				w.mu.Lock()
				w.ids = append(w.ids, id)
				w.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { w.stop() })
	return w
}

// stop stops the writers (again: no-op) and returns the committed ids.
func (w *writers) stop() []int64 {
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	sort.Slice(w.ids, func(i, j int) bool { return w.ids[i] < w.ids[j] })
	return w.ids
}

// streamInserts streams table from pos until the row with id 0 and
// returns the ids inserted.
func streamInserts(t *testing.T, pos Position, table string) map[int64]bool {
	t.Helper()
	cfg := Config{Addr: mariadb.Addr(), User: "root", Flavor: "mariadb", ServerID: 7201}
	cfg.SetDefaults()
	src := NewSource(cfg, "mariadb", []string{table}, zerolog.Nop(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan *Txn, 100)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, Start{Pos: pos}, out) }()
	ids := map[int64]bool{}
	for {
		select {
		case txn := <-out:
			for _, ch := range txn.Changes {
				id := ch.After[0].(int64)
				if id == 0 {
					cancel()
					if err := <-done; err != nil {
						t.Fatalf("stream from %s: %v", pos, err)
					}
					return ids
				}
				ids[id] = true
			}
		case err := <-done:
			t.Fatalf("stream from %s ended: %v", pos, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("stream from %s: no end marker within 30s", pos)
		}
	}
}

// Without RELOAD the lock is refused, and the error says what is missing.
func TestReadConsistentLockRefused(t *testing.T) {
	admin := mariadb.DB(t, "")
	for _, q := range []string{"DROP USER IF EXISTS 'noreload'@'%'", "CREATE USER 'noreload'@'%'",
		"GRANT SELECT, BINLOG MONITOR ON *.* TO 'noreload'@'%'"} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db, err := sql.Open("mysql", "noreload@tcp("+mariadb.Addr()+")/")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = readConsistent(context.Background(), db, positionLocked, func(*sql.Conn, Position) error {
		t.Error("read ran without the lock")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "FLUSH TABLES WITH READ LOCK") || !strings.Contains(err.Error(), "RELOAD") {
		t.Errorf("readConsistent without RELOAD = %v, want the lock refused, naming RELOAD", err)
	}
}

// The pooled connection comes back without the lock, with the server's
// time zone and lock wait, and with its own isolation level: the snapshot
// is REPEATABLE READ for its transaction only.
func TestReadConsistentRestoresConnection(t *testing.T) {
	db := freshDB(t, "consistent_conn")
	db.SetMaxOpenConns(1) // the same connection throughout
	for _, q := range []string{"CREATE TABLE t (id INT PRIMARY KEY)", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	session := func() (got, want string) {
		if err := db.QueryRow(`SELECT CONCAT_WS(' ', @@SESSION.time_zone, @@SESSION.lock_wait_timeout, @@SESSION.tx_isolation),
			CONCAT_WS(' ', @@GLOBAL.time_zone, @@GLOBAL.lock_wait_timeout, 'READ-COMMITTED')`).Scan(&got, &want); err != nil {
			t.Fatal(err)
		}
		return got, want
	}
	for _, mode := range []positionMode{positionAuto, positionLocked} {
		if _, err := readConsistent(context.Background(), db, mode, func(conn *sql.Conn, _ Position) error {
			var tz, iso string
			if err := conn.QueryRowContext(context.Background(), `SELECT @@SESSION.time_zone, trx_isolation_level
				FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()`).Scan(&tz, &iso); err != nil {
				return err
			}
			if tz != "+00:00" || iso != "REPEATABLE READ" {
				t.Errorf("mode %d: read runs at time zone %s, isolation %s; want +00:00, REPEATABLE READ", mode, tz, iso)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got, want := session(); got != want {
			t.Errorf("mode %d: session after readConsistent %q, want %q", mode, got, want)
		}
		admin := mariadb.DB(t, "consistent_conn")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := admin.ExecContext(ctx, "INSERT INTO t VALUES (?)", mode+1); err != nil {
			t.Errorf("mode %d: a write after readConsistent: %v (lock still held?)", mode, err)
		}
		cancel()
	}
}
