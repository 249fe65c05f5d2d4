package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// snapshotLockWait (seconds, the session's lock_wait_timeout) bounds how
// long MySQL's snapshot lock may wait for running statements and commits
// in flight, with writes blocked meanwhile; it then fails rather than
// keep them blocked. Debezium's snapshot.lock.timeout.ms is 10 s too.
const snapshotLockWait = 10

// positionMode says how readConsistent finds the snapshot's position.
type positionMode int

const (
	// positionAuto: the position the server reports for the snapshot,
	// if it does (MariaDB, Percona Server), else positionLocked.
	positionAuto positionMode = iota
	// positionLocked: open the snapshot and read the position under
	// FLUSH TABLES WITH READ LOCK (MySQL). Forced by tests on MariaDB.
	positionLocked
)

// ReadConsistent runs read inside one REPEATABLE READ transaction started
// WITH CONSISTENT SNAPSHOT, in UTC, and returns the binlog position of
// exactly that snapshot: every transaction before it in the binlog is
// visible to read, none after it is.
//
// Where the server reports the binlog position of a consistent snapshot
// (binlog_snapshot_file/position: MariaDB, Percona Server) no lock is
// taken. Elsewhere (MySQL) the binlog can hold a transaction InnoDB does
// not show yet (group commit syncs the binlog before the engines commit),
// so the position read beside a snapshot may be past rows the snapshot
// lacks. There the snapshot is opened and the position read under FLUSH
// TABLES WITH READ LOCK, as mysqldump --single-transaction --source-data
// and Debezium's default snapshot locking do: it waits for commits in
// flight and holds new ones back, and is released before read runs.
// Writes are blocked for a few round trips, plus the wait for running
// statements and commits, at most snapshotLockWait seconds; the user
// needs the RELOAD privilege. LOCK INSTANCE FOR BACKUP would not do: it
// lets DML commit.
func ReadConsistent(ctx context.Context, db *sql.DB, read func(conn *sql.Conn, pos Position) error) (Position, error) {
	return readConsistent(ctx, db, positionAuto, read)
}

func readConsistent(ctx context.Context, db *sql.DB, mode positionMode, read func(conn *sql.Conn, pos Position) error) (Position, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return Position{}, fmt.Errorf("snapshot: %w", err)
	}
	defer conn.Close()
	// The connection goes back to the pool: what is set here is reset.
	restore := context.WithoutCancel(ctx)
	// TIMESTAMP columns are read in UTC, as the stream renders them.
	if _, err := conn.ExecContext(ctx, "SET SESSION time_zone = '+00:00'"); err != nil {
		return Position{}, fmt.Errorf("snapshot: %w", err)
	}
	defer conn.ExecContext(restore, "SET SESSION time_zone = DEFAULT") //nolint:errcheck // a failure leaves a bad connection the pool drops
	if mode == positionAuto {
		reported, err := reportsSnapshotPosition(ctx, conn)
		if err != nil {
			return Position{}, fmt.Errorf("snapshot: %w", err)
		}
		if !reported {
			mode = positionLocked
		}
	}
	if mode == positionLocked {
		if err := lockForSnapshot(ctx, conn); err != nil {
			return Position{}, err
		}
		defer conn.ExecContext(restore, "UNLOCK TABLES") //nolint:errcheck // released below; this covers the errors on the way
	}
	for _, q := range []string{
		"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", // the next transaction only
		"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return Position{}, fmt.Errorf("snapshot: %s: %w", q, err)
		}
	}
	defer conn.ExecContext(restore, "ROLLBACK") //nolint:errcheck // read-only
	var pos Position
	if mode == positionLocked {
		if pos, err = CurrentPosition(ctx, conn); err != nil {
			return Position{}, fmt.Errorf("snapshot: %w", err)
		}
		// UNLOCK TABLES after FLUSH TABLES WITH READ LOCK does not commit:
		// the snapshot stays open.
		if _, err := conn.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
			return Position{}, fmt.Errorf("snapshot: UNLOCK TABLES: %w", err)
		}
	} else if pos, err = reportedPosition(ctx, conn); err != nil {
		return Position{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := read(conn, pos); err != nil {
		return Position{}, err
	}
	return pos, nil
}

// reportsSnapshotPosition asks whether the server reports the binlog
// position of a consistent snapshot (MariaDB, Percona Server; MySQL has
// no such status variable).
func reportsSnapshotPosition(ctx context.Context, conn *sql.Conn) (bool, error) {
	err := conn.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'binlog_snapshot_position'").Scan(new(string), new(string))
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// reportedPosition reads the position of the current consistent snapshot.
func reportedPosition(ctx context.Context, conn *sql.Conn) (Position, error) {
	var file, off string
	if err := conn.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'binlog_snapshot_file'").Scan(new(string), &file); err != nil {
		return Position{}, fmt.Errorf("binlog_snapshot_file: %w", err)
	}
	if err := conn.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'binlog_snapshot_position'").Scan(new(string), &off); err != nil {
		return Position{}, fmt.Errorf("binlog_snapshot_position: %w", err)
	}
	if file == "" {
		return Position{}, errors.New("the server reports no binlog_snapshot_file: is log_bin on?")
	}
	return ParsePosition(file + ":" + off)
}

// lockForSnapshot takes FLUSH TABLES WITH READ LOCK on conn, waiting at
// most snapshotLockWait seconds. Like mysqldump, it first flushes the
// tables without the lock (LOCAL: not written to the binlog), so the
// locked flush, during which writes wait, has little left to close.
func lockForSnapshot(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = %d", snapshotLockWait)); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "SET SESSION lock_wait_timeout = DEFAULT") //nolint:errcheck // as time_zone
	for _, q := range []string{"FLUSH LOCAL TABLES", "FLUSH TABLES WITH READ LOCK"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("snapshot: %s: %w (this server does not report binlog_snapshot_position, so the snapshot's "+
				"binlog position is read under FLUSH TABLES WITH READ LOCK: the user needs the RELOAD privilege, and no "+
				"statement may run longer than %d s meanwhile)", q, err, snapshotLockWait)
		}
	}
	return nil
}
