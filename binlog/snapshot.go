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
	rows, err := conn.QueryContext(ctx, "SELECT * FROM `"+strings.ReplaceAll(schema, "`", "``")+"`.`"+strings.ReplaceAll(table, "`", "``")+"`")
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
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
	case "BIT": // the binlog decoder reads BIT as a big-endian integer
		var v uint64
		for _, c := range b {
			v = v<<8 | uint64(c)
		}
		return int64(v)
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
