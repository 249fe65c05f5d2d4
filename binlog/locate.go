package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// BinaryLog is one file of SHOW BINARY LOGS.
type BinaryLog struct {
	File string
	Size uint64
}

// BinaryLogs lists the server's binlog files, oldest first (SHOW BINARY
// LOGS).
func BinaryLogs(ctx context.Context, db *sql.DB) ([]BinaryLog, error) {
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return nil, fmt.Errorf("SHOW BINARY LOGS: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var logs []BinaryLog
	for rows.Next() {
		vals := make([]sql.RawBytes, len(cols)) // Log_name, File_size[, Encrypted]
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		var l BinaryLog
		l.File = string(vals[0])
		if _, err := fmt.Sscan(string(vals[1]), &l.Size); err != nil {
			return nil, fmt.Errorf("SHOW BINARY LOGS: size %q of %s: %w", vals[1], l.File, err)
		}
		logs = append(logs, l)
	}
	return logs, rows.Err()
}

// midTransaction are the binlog events a transaction has after its first
// one: a stream started at one of them would see rows without their BEGIN,
// or a COMMIT alone.
var midTransaction = map[string]bool{
	"Table_map": true, "Xid": true, "Annotate_rows": true, "Rows_query": true,
	"Intvar": true, "Rand": true, "User var": true, "Begin_load_query": true,
	"Execute_load_query": true, "Append_block": true, "Delete_file": true,
}

// CheckPosition returns nil when the server can stream from pos and pos is
// a transaction boundary: the file is among SHOW BINARY LOGS, pos lies
// within it, and it is the end of the file or the start of an event that
// begins a transaction or stands outside one (SHOW BINLOG EVENTS FROM pos
// fails on an offset inside an event). Otherwise the error says which.
func CheckPosition(ctx context.Context, db *sql.DB, pos Position) error {
	if _, err := pos.Version(); err != nil {
		return err
	}
	logs, err := BinaryLogs(ctx, db)
	if err != nil {
		return err
	}
	var size uint64
	found := false
	for _, l := range logs {
		if l.File == pos.File {
			size, found = l.Size, true
		}
	}
	switch {
	case !found && len(logs) == 0:
		return fmt.Errorf("binlog file %s is not on the server: it lists no binlog (is log_bin on?)", pos.File)
	case !found:
		return fmt.Errorf("binlog file %s is not on the server, which has %s (%d) to %s (%d): purged, or another server's", pos.File,
			logs[0].File, logs[0].Size, logs[len(logs)-1].File, logs[len(logs)-1].Size)
	case pos.Pos < 4:
		return fmt.Errorf("position %s: offsets start at 4 (after the file's magic number)", pos)
	case uint64(pos.Pos) > size:
		return fmt.Errorf("position %s is past the end of %s, which holds %d bytes", pos, pos.File, size)
	case uint64(pos.Pos) == size:
		return nil // the end of the file: the next event, when there is one
	}
	var logName, evType, info string
	var at, serverID, end uint64
	err = db.QueryRowContext(ctx, fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d LIMIT 1", strings.ReplaceAll(pos.File, "'", "''"), pos.Pos)).
		Scan(&logName, &at, &evType, &serverID, &end, &info)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("position %s is not the start of an event in %s: %w", pos, pos.File, err)
	case at != uint64(pos.Pos):
		return fmt.Errorf("position %s is not the start of an event: the next one is at %d", pos, at)
	}
	up := strings.ToUpper(strings.TrimSpace(info))
	if midTransaction[evType] || strings.Contains(evType, "_rows") ||
		(evType == "Query" && (up == "COMMIT" || up == "ROLLBACK" || strings.HasPrefix(up, "XA "))) {
		return fmt.Errorf("position %s is inside a transaction (its event is %s): give the position where a transaction begins or ends (SHOW BINLOG EVENTS: a Gtid or BEGIN event, or the end of the file)", pos, evType)
	}
	return nil
}

// PositionOfGTID returns the binlog position from which a replica whose
// GTID state is the set gtid would be streamed: where the first transaction
// not in the set begins, or, when the server has none yet, the position its
// binlog dump reached (its first heartbeat). The server decides what the
// set covers: this is a binlog dump from the set, with its errors (a set
// the server's binlog does not have, or has purged, is refused). It
// registers as a replica with a random server id (not cfg.ServerID, which
// a running daemon may be using) and gives up after timeout.
func PositionOfGTID(ctx context.Context, cfg Config, flavor, gtid string, timeout time.Duration) (Position, error) {
	set, err := mysql.ParseGTIDSet(flavor, gtid)
	if err != nil {
		return Position{}, fmt.Errorf("gtid set %q (%s): %w", gtid, flavor, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sc := cfg.syncerConfig(flavor, 1<<31+rand.Uint32N(1<<31-1))
	sc.HeartbeatPeriod = 200 * time.Millisecond
	sc.EventCacheCount = 16
	sc.RowsEventDecodeFunc = func(*replication.RowsEvent, []byte) error { return nil } // headers suffice
	syncer := replication.NewBinlogSyncer(sc)
	defer syncer.Close()
	st, err := syncer.StartSyncGTID(set)
	if err != nil {
		return Position{}, fmt.Errorf("binlog dump from gtid %s: %w", gtid, err)
	}
	file := ""
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			return Position{}, fmt.Errorf("binlog dump from gtid %s: %w", gtid, err)
		}
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			file = string(e.NextLogName)
		case *replication.MariadbGTIDEvent, *replication.GTIDEvent, *replication.GtidTaggedLogEvent:
			if file == "" || ev.Header.LogPos < ev.Header.EventSize {
				return Position{}, fmt.Errorf("binlog dump from gtid %s: a transaction at an unknown position", gtid)
			}
			return Position{File: file, Pos: ev.Header.LogPos - ev.Header.EventSize}, nil
		case *replication.HeartbeatEvent:
			if e.Filename != "" {
				file = e.Filename
			}
			if file != "" && ev.Header.LogPos >= 4 {
				return Position{File: file, Pos: ev.Header.LogPos}, nil
			}
		}
	}
}
