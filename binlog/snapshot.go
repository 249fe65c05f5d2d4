package binlog

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Snapshot reads every row of the given tables ("schema.table") in one
// consistent read and sends them on out as Insert changes, in pieces of at
// most chunk rows marked Partial, followed by one empty complete Txn at the
// snapshot's position: the checkpoint is written only once every row is in
// Redis. It returns the position to stream from: the snapshot's exactly
// (see ReadConsistent), so no transaction is both in the snapshot and
// streamed, or in neither.
func Snapshot(ctx context.Context, db *sql.DB, tables []string, chunk int, out chan<- *Txn) (Position, error) {
	start := time.Now()
	pos, err := ReadConsistent(ctx, db, func(conn *sql.Conn, pos Position) error {
		for _, name := range tables {
			if err := snapshotTable(ctx, conn, name, pos, chunk, out); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Position{}, err
	}
	if err := sendTxn(ctx, out, &Txn{Pos: pos, Commit: start}); err != nil {
		return Position{}, err
	}
	return pos, nil
}

func snapshotTable(ctx context.Context, conn *sql.Conn, name string, pos Position, chunk int, out chan<- *Txn) error {
	schema, table, _ := strings.Cut(name, ".")
	from := quoteName(schema) + "." + quoteName(table)
	types, err := columnTypes(ctx, conn, from)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	rows, err := conn.QueryContext(ctx, "SELECT "+selectList(types)+" FROM "+from)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	defer rows.Close()
	cols := make([]string, len(types))
	decimal := make([]bool, len(types))
	for i, ct := range types {
		cols[i] = ct.Name()
		decimal[i] = ct.DatabaseTypeName() == "DECIMAL"
	}
	t := NewTable(schema, table, cols, decimal)
	raw := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	txn := &Txn{Pos: pos, Partial: true, Commit: time.Now()}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("snapshot %s: %w", name, err)
		}
		row := make([]any, len(cols))
		for i, b := range raw {
			row[i] = convertText(b, types[i].DatabaseTypeName())
		}
		txn.Changes = append(txn.Changes, Change{Table: t, Op: Insert, After: row})
		if len(txn.Changes) >= chunk {
			if err := sendTxn(ctx, out, txn); err != nil {
				return err
			}
			txn = &Txn{Pos: pos, Partial: true, Commit: time.Now()}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	if len(txn.Changes) > 0 {
		return sendTxn(ctx, out, txn)
	}
	return nil
}

// columnTypes returns the columns of from (a quoted table name) in table
// order. Inside the snapshot's transaction, the table's metadata lock
// keeps them until the rows are read.
func columnTypes(ctx context.Context, conn *sql.Conn, from string) ([]*sql.ColumnType, error) {
	rows, err := conn.QueryContext(ctx, "SELECT * FROM "+from+" LIMIT 0")
	if err != nil {
		return nil, err
	}
	types, err := rows.ColumnTypes()
	if err != nil {
		rows.Close()
		return nil, err
	}
	return types, rows.Close()
}

// selectList reads every column as SELECT * would, except FLOATs: the
// text protocol prints them rounded to 6 digits (3.40282e38), the binlog
// has the exact value. A FLOAT widened to DOUBLE is printed exactly, and
// parsed back to the same float32 by convertText.
func selectList(types []*sql.ColumnType) string {
	var b strings.Builder
	for i, ct := range types {
		if i > 0 {
			b.WriteString(", ")
		}
		col := quoteName(ct.Name())
		if strings.TrimPrefix(ct.DatabaseTypeName(), "UNSIGNED ") == "FLOAT" {
			b.WriteString(col + " * 1E0 AS " + col)
			continue
		}
		b.WriteString(col)
	}
	return b.String()
}

func quoteName(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// convertText turns a text-protocol value into the Go type the binlog
// decoder produces for the same column, so snapshot and stream render
// identical keys and values.
func convertText(b []byte, typ string) any {
	if b == nil {
		return nil
	}
	switch strings.TrimPrefix(typ, "UNSIGNED ") {
	case "TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT", "YEAR":
		if strings.HasPrefix(typ, "UNSIGNED") {
			if v, err := strconv.ParseUint(string(b), 10, 64); err == nil {
				return v
			}
		} else if v, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return v
		}
	case "FLOAT":
		if v, err := strconv.ParseFloat(string(b), 32); err == nil {
			return float32(v)
		}
	case "DOUBLE":
		if v, err := strconv.ParseFloat(string(b), 64); err == nil {
			return v
		}
	case "BIT": // a big-endian unsigned integer, as Source renders it
		var v uint64
		for _, c := range b {
			v = v<<8 | uint64(c)
		}
		return v
	case "BLOB", "TINYBLOB", "MEDIUMBLOB", "LONGBLOB", "BINARY", "VARBINARY", "GEOMETRY":
		return append([]byte(nil), b...)
	}
	return string(b)
}

func sendTxn(ctx context.Context, out chan<- *Txn, t *Txn) error {
	select {
	case out <- t:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
