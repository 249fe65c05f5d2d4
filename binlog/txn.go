// Package binlog tails a MySQL or MariaDB binary log and turns its row events
// into transactions, in commit order.
//
// It reads the binlog with go-mysql's replication.BinlogSyncer (the layer
// go-mysql's canal is built on) rather than canal itself: canal maps row
// values to column names through the LIVE table schema, which mis-maps every
// row written before an ALTER TABLE. cachesync instead names columns from the
// TableMapEvent metadata that binlog_row_metadata=FULL writes into every
// transaction, so each row event describes itself.
package binlog

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Position is a point in the binlog: a file name and a byte offset in it.
type Position struct {
	File string
	Pos  uint32
}

// String formats the position as "file:pos".
func (p Position) String() string { return fmt.Sprintf("%s:%d", p.File, p.Pos) }

// IsZero reports whether p is the zero position.
func (p Position) IsZero() bool { return p.File == "" && p.Pos == 0 }

// ParsePosition parses "file:pos".
func ParsePosition(s string) (Position, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return Position{}, fmt.Errorf("binlog position %q: want file:pos", s)
	}
	n, err := strconv.ParseUint(s[i+1:], 10, 32)
	if err != nil {
		return Position{}, fmt.Errorf("binlog position %q: bad offset: %w", s, err)
	}
	return Position{File: s[:i], Pos: uint32(n)}, nil
}

// Version maps a position to a number that grows with the position across
// binlog files: the file's sequence number (the digits after the last '.')
// in the high 32 bits, the offset in the low 32. It is the version stamped on
// every value the sink writes, so a replay can never regress a key. It holds
// for one server's binlog history; RESET MASTER or a fail-over to a server
// with other file numbers breaks monotonicity (resnapshot in that case).
func (p Position) Version() (uint64, error) {
	i := strings.LastIndexByte(p.File, '.')
	seq, err := strconv.ParseUint(p.File[i+1:], 10, 32)
	if i < 0 || err != nil {
		return 0, fmt.Errorf("binlog file %q: no numeric suffix to derive a version from", p.File)
	}
	return seq<<32 | uint64(p.Pos), nil
}

// Op is the kind of a row change.
type Op uint8

// Row change kinds.
const (
	Insert Op = iota + 1
	Update
	Delete
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Table describes the columns of a table as the binlog wrote them for one
// transaction. Tables are shared between changes and must not be modified;
// the source hands out the same *Table for as long as the columns stay the
// same, so consumers may cache per-table work keyed by the pointer.
type Table struct {
	Schema  string
	Name    string
	Columns []string
	// Decimal marks DECIMAL columns, whose values arrive as strings but
	// are numbers (rendered unquoted in JSON).
	Decimal []bool
	index   map[string]int
	conv    map[int]valueConv // columns whose binlog value needs converting
}

// NewTable builds a Table; columns are the names in row order.
func NewTable(schema, name string, columns []string, decimal []bool) *Table {
	t := &Table{Schema: schema, Name: name, Columns: columns, Decimal: decimal, index: make(map[string]int, len(columns))}
	if t.Decimal == nil {
		t.Decimal = make([]bool, len(columns))
	}
	for i, c := range columns {
		t.index[strings.ToLower(c)] = i
	}
	return t
}

// FullName is "schema.table".
func (t *Table) FullName() string { return t.Schema + "." + t.Name }

// Column returns the index of the named column (case-insensitive).
func (t *Table) Column(name string) (int, bool) {
	i, ok := t.index[strings.ToLower(name)]
	return i, ok
}

// Change is one row change. Row values are nil (NULL), a signed or
// unsigned integer of any width (BIT and YEAR too), float32, float64,
// string (text in UTF-8, DECIMAL, ENUM and SET names, temporal types,
// JSON) or []byte (a binary column: BINARY, VARBINARY, BLOB, GEOMETRY).
// Snapshot and Source give every column the same type and the same text.
type Change struct {
	Table  *Table
	Op     Op
	Before []any // nil on Insert
	After  []any // nil on Delete
}

// Txn is one committed transaction: the changes to tables of interest, in
// binlog order. A Txn with no changes still moves the checkpoint forward.
type Txn struct {
	// Pos is where to resume reading after this transaction.
	Pos Position
	// GTID identifies the transaction when the server has GTIDs ("" if not).
	GTID string
	// Commit is the commit time; second resolution unless the server
	// writes commit timestamps with microseconds (MySQL 8).
	Commit time.Time
	// Changes holds the row changes of ruled tables.
	Changes []Change
	// Partial marks all but the last piece of a transaction that was split
	// (an oversized transaction or a snapshot): no checkpoint after it.
	Partial bool
	// DDL holds the statement when the transaction is a DDL statement.
	DDL string
	// Bytes estimates the memory its row values take (see Budget).
	Bytes  int
	held   int64 // taken from budget
	budget *Budget
	// Snapshot records the snapshot's progress, applied with the rows.
	Snapshot *SnapshotStep
	// Truncated names the ruled table ("schema.table", lower case) a
	// TRUNCATE statement emptied: it writes no row events, so the sink
	// deletes the table's keys itself.
	Truncated string
}

// Rows returns the number of row changes in the transaction.
func (t *Txn) Rows() int { return len(t.Changes) }

// SnapshotStep is what a snapshot transaction records about the snapshot:
// the tables it begins, or how far the chunk it carries got in its table.
type SnapshotStep struct {
	Start []string // tables ("schema.table") whose snapshot begins
	Table string   // the table of the chunk
	After string   // FormatKey of the chunk's last primary key
	Done  bool     // the chunk was the table's last
}
