package binlog

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// ServerInfo is what cachesync needs to know about the primary.
type ServerInfo struct {
	Flavor  string // "mysql" or "mariadb"
	Version string
}

// CheckServer verifies that the server writes a binlog cachesync can read —
// ROW format, FULL row image, FULL row metadata (column names in every
// TableMapEvent) — and detects its flavor. Each problem is named with the
// setting that fixes it.
func CheckServer(ctx context.Context, db *sql.DB) (ServerInfo, error) {
	var info ServerInfo
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&info.Version); err != nil {
		return info, fmt.Errorf("query server version: %w", err)
	}
	info.Flavor = "mysql"
	if strings.Contains(strings.ToLower(info.Version), "mariadb") {
		info.Flavor = "mariadb"
	}
	want := []struct{ name, value string }{
		{"log_bin", "1"},
		{"binlog_format", "ROW"},
		{"binlog_row_image", "FULL"},
		{"binlog_row_metadata", "FULL"},
	}
	for _, w := range want {
		var got sql.NullString
		if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL."+w.name).Scan(&got); err != nil {
			return info, fmt.Errorf("server %s: read @@%s: %w", info.Version, w.name, err)
		}
		v := strings.ToUpper(got.String)
		if v == "ON" {
			v = "1"
		}
		if v != w.value {
			return info, fmt.Errorf("server %s: %s is %q, cachesync needs %s=%s (set it in my.cnf or with SET GLOBAL)",
				info.Version, w.name, got.String, w.name, strings.Replace(w.value, "1", "ON", 1))
		}
	}
	return info, nil
}

// Querier is what CurrentPosition needs: a *sql.DB or a *sql.Conn.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// CurrentPosition returns the server's current binlog write position.
func CurrentPosition(ctx context.Context, db Querier) (Position, error) {
	for _, q := range []string{"SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"} {
		pos, err := queryStatus(ctx, db, q)
		if err == nil {
			return pos, nil
		}
		if !strings.Contains(err.Error(), "syntax") {
			return Position{}, err
		}
	}
	return Position{}, fmt.Errorf("server knows neither SHOW MASTER STATUS nor SHOW BINARY LOG STATUS")
}

func queryStatus(ctx context.Context, db Querier, q string) (Position, error) {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return Position{}, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return Position{}, err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return Position{}, err
		}
		return Position{}, fmt.Errorf("%s: no row; is log_bin on?", q)
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return Position{}, err
	}
	return ParsePosition(string(vals[0]) + ":" + string(vals[1]))
}
