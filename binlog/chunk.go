package binlog

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"strings"
	"time"
)

// KeyColumns returns the columns of table's primary key in order, else
// those of its first unique key over NOT NULL columns; nil when it has
// neither (ReadChunk then reads the whole table at once).
func KeyColumns(ctx context.Context, db *sql.DB, table string) ([]string, error) {
	schema, name, _ := strings.Cut(table, ".")
	rows, err := db.QueryContext(ctx, `
		SELECT s.INDEX_NAME, s.COLUMN_NAME
		FROM information_schema.STATISTICS s
		JOIN information_schema.COLUMNS c
		  ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME
		WHERE LOWER(s.TABLE_SCHEMA) = ? AND LOWER(s.TABLE_NAME) = ? AND s.NON_UNIQUE = 0
		  AND s.INDEX_NAME IN (
		    SELECT INDEX_NAME FROM information_schema.STATISTICS
		    WHERE LOWER(TABLE_SCHEMA) = ? AND LOWER(TABLE_NAME) = ? AND NON_UNIQUE = 0
		    GROUP BY INDEX_NAME HAVING SUM(NULLABLE = 'YES') = 0 AND SUM(SUB_PART IS NOT NULL) = 0)
		ORDER BY s.INDEX_NAME <> 'PRIMARY', s.INDEX_NAME, s.SEQ_IN_INDEX`, schema, name, schema, name)
	if err != nil {
		return nil, fmt.Errorf("key of %s: %w", table, err)
	}
	defer rows.Close()
	var key []string
	first := ""
	for rows.Next() {
		var idx, col string
		if err := rows.Scan(&idx, &col); err != nil {
			return nil, fmt.Errorf("key of %s: %w", table, err)
		}
		if first == "" {
			first = idx
		}
		if idx == first {
			key = append(key, col)
		}
	}
	return key, rows.Err()
}

// FormatKey encodes key values (text protocol bytes) for SnapshotStep.After:
// base64 of each, joined by ".".
func FormatKey(vals [][]byte) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = base64.RawURLEncoding.EncodeToString(v)
	}
	return strings.Join(parts, ".")
}

// ParseKey decodes FormatKey's output; "" is no key (from the start).
func ParseKey(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ".")
	vals := make([]string, len(parts))
	for i, p := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("snapshot key %q: %w", s, err)
		}
		vals[i] = string(b)
	}
	return vals, nil
}

// ReadChunk reads, in one short consistent read, up to n rows of table
// ("schema.table") whose key (KeyColumns) comes after the key after
// (FormatKey; "" from the start), in key order. It returns them as Insert
// changes of a complete Txn at the position of the read, so that a
// transaction committed after it comes after it in the stream; its
// Snapshot step names the last key read and whether the table is done.
// Without key columns the whole table is one chunk.
func ReadChunk(ctx context.Context, db *sql.DB, table string, key []string, after string, n int) (*Txn, error) {
	schema, name, _ := strings.Cut(table, ".")
	from := quoteName(schema) + "." + quoteName(name)
	var where string
	var args []any
	if len(key) > 0 {
		vals, err := ParseKey(after)
		if err != nil {
			return nil, err
		}
		if vals != nil && len(vals) != len(key) {
			return nil, fmt.Errorf("snapshot of %s: stored key has %d values for %d key columns (the key changed: snapshot the table again)", table, len(vals), len(key))
		}
		if vals != nil {
			// (k1 > v1) OR (k1 = v1 AND k2 > v2) OR ...: a range the
			// optimizer reads from the key, unlike a row comparison.
			var or []string
			for i := range key {
				var and []string
				for j := 0; j < i; j++ {
					and = append(and, quoteName(key[j])+" = ?")
					args = append(args, vals[j])
				}
				and = append(and, quoteName(key[i])+" > ?")
				args = append(args, vals[i])
				or = append(or, "("+strings.Join(and, " AND ")+")")
			}
			where = " WHERE " + strings.Join(or, " OR ")
		}
		quoted := make([]string, len(key))
		for i, k := range key {
			quoted[i] = quoteName(k)
		}
		where += fmt.Sprintf(" ORDER BY %s LIMIT %d", strings.Join(quoted, ", "), n)
	}
	start := time.Now()
	var txn *Txn
	pos, err := ReadConsistent(ctx, db, func(conn *sql.Conn, pos Position) error {
		// The column types before the read: a FLOAT is read widened
		// (selectList), and converted back by its declared type.
		types, err := columnTypes(ctx, conn, from)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", table, err)
		}
		rows, err := conn.QueryContext(ctx, "SELECT "+selectList(types)+" FROM "+from+where, args...)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", table, err)
		}
		defer rows.Close()
		cols := make([]string, len(types))
		decimal := make([]bool, len(types))
		keyIdx := make([]int, len(key))
		for i, ct := range types {
			cols[i] = ct.Name()
			decimal[i] = ct.DatabaseTypeName() == "DECIMAL"
			for j, k := range key {
				if strings.EqualFold(k, ct.Name()) {
					keyIdx[j] = i
				}
			}
		}
		t := NewTable(schema, name, cols, decimal)
		raw := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range raw {
			ptrs[i] = &raw[i]
		}
		txn = &Txn{Commit: start, Snapshot: &SnapshotStep{Table: table, After: after}}
		var last [][]byte
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				return fmt.Errorf("snapshot %s: %w", table, err)
			}
			row := make([]any, len(cols))
			for i, b := range raw {
				row[i] = convertText(b, types[i].DatabaseTypeName())
			}
			txn.Changes = append(txn.Changes, Change{Table: t, Op: Insert, After: row})
			txn.Bytes += rowBytes(row) + 64
			last = last[:0]
			for _, i := range keyIdx {
				last = append(last, append([]byte(nil), raw[i]...)) // raw is reused
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("snapshot %s: %w", table, err)
		}
		if len(txn.Changes) > 0 && len(key) > 0 {
			txn.Snapshot.After = FormatKey(last)
		}
		txn.Snapshot.Done = len(key) == 0 || len(txn.Changes) < n
		return nil
	})
	if err != nil {
		return nil, err
	}
	txn.Pos = pos
	return txn, nil
}
