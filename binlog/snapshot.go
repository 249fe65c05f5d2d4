package binlog

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

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
