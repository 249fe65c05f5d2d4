package binlog

import (
	"context"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
)

// MySQL transactions start with a GTID event, untagged (gtid_next =
// uuid:n) or, from MySQL 8.4, tagged (uuid:tag:n, GTID_TAGGED_LOG_EVENT).
// Both name the transaction and carry its commit time in microseconds.
// No MySQL server runs here: the events are built as go-mysql decodes them
// and fed to the reader.
func TestMySQLGTIDEvents(t *testing.T) {
	sid := uuid.MustParse("3e11fa47-71ca-11e1-9e33-c80aa9429562")
	commit := time.Date(2026, 11, 29, 10, 0, 0, 123456000, time.UTC)
	gtid := replication.GTIDEvent{
		SID: sid[:], GNO: 42, SequenceNumber: 7, LastCommitted: 6,
		ImmediateCommitTimestamp: uint64(commit.UnixMicro()), OriginalCommitTimestamp: uint64(commit.UnixMicro()),
	}
	tagged := gtid
	tagged.Tag = mysql.NewTag("Cachesync")
	for _, tc := range []struct {
		name string
		typ  replication.EventType
		ev   replication.Event
		want string
	}{
		{"untagged", replication.GTID_EVENT, &gtid, "3e11fa47-71ca-11e1-9e33-c80aa9429562:42"},
		{"tagged", replication.GTID_TAGGED_LOG_EVENT, &replication.GtidTaggedLogEvent{GTIDEvent: tagged},
			"3e11fa47-71ca-11e1-9e33-c80aa9429562:cachesync:42"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := make(chan *Txn, 10)
			r := &reader{
				src:    NewSource(Config{MaxTxnChanges: 100}, "mysql", nil, zerolog.Nop(), nil),
				out:    out,
				file:   "binlog.000001",
				tables: map[uint64]*Table{},
			}
			pos := uint32(4)
			feed := func(typ replication.EventType, e replication.Event, ts time.Time) {
				t.Helper()
				pos += 100
				ev := &replication.BinlogEvent{Header: &replication.EventHeader{Timestamp: uint32(ts.Unix()), EventType: typ, LogPos: pos}, Event: e}
				if err := r.handle(context.Background(), ev); err != nil {
					t.Fatalf("handle %s: %v", typ, err)
				}
			}
			// An earlier transaction with another GTID and an older commit
			// time: nothing of it may stick to the next one.
			old := commit.Add(-time.Hour)
			feed(replication.GTID_EVENT, &replication.GTIDEvent{SID: sid[:], GNO: 41,
				OriginalCommitTimestamp: uint64(old.UnixMicro())}, old)
			feed(replication.QUERY_EVENT, &replication.QueryEvent{Query: []byte("BEGIN")}, old)
			feed(replication.XID_EVENT, &replication.XIDEvent{XID: 1}, old)
			if first := <-out; first.GTID != "3e11fa47-71ca-11e1-9e33-c80aa9429562:41" {
				t.Fatalf("first transaction GTID %q", first.GTID)
			}

			// The header timestamp is when the statement began (seconds);
			// the event's own timestamp is the commit, in microseconds.
			feed(tc.typ, tc.ev, commit.Add(-3*time.Second))
			feed(replication.QUERY_EVENT, &replication.QueryEvent{Query: []byte("BEGIN")}, commit)
			feed(replication.XID_EVENT, &replication.XIDEvent{XID: 2}, commit)
			txn := <-out
			if txn.GTID != tc.want {
				t.Errorf("GTID %q, want %q", txn.GTID, tc.want)
			}
			if !txn.Commit.Equal(commit) {
				t.Errorf("commit time %s, want %s", txn.Commit.UTC().Format(time.RFC3339Nano), commit.Format(time.RFC3339Nano))
			}
			if txn.Pos != (Position{"binlog.000001", pos}) {
				t.Errorf("position %s, want binlog.000001:%d", txn.Pos, pos)
			}
		})
	}
}
