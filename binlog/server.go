package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	sqldriver "github.com/go-sql-driver/mysql"
)

// ServerInfo is what cachesync needs to know about the primary.
type ServerInfo struct {
	Flavor  string // "mysql" or "mariadb"
	Version string
}

// CheckServer verifies that the server writes a binlog cachesync can read —
// ROW format, FULL row image, FULL row metadata (column names in every
// TableMapEvent), whole JSON values (no PARTIAL_JSON on MySQL) — and
// detects its flavor. Each problem is named with the setting that fixes it.
func CheckServer(ctx context.Context, db *sql.DB) (ServerInfo, error) {
	var info ServerInfo
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&info.Version); err != nil {
		return info, fmt.Errorf("query server version: %w", err)
	}
	info.Flavor = "mysql"
	if strings.Contains(strings.ToLower(info.Version), "mariadb") {
		info.Flavor = "mariadb"
	}
	return info, checkSettings(info, func(name string) (string, bool, error) {
		var got sql.NullString
		err := db.QueryRowContext(ctx, "SELECT @@GLOBAL."+name).Scan(&got)
		if me := (*sqldriver.MySQLError)(nil); errors.As(err, &me) && me.Number == erUnknownSystemVariable {
			return "", false, nil
		}
		return got.String, err == nil, err
	})
}

// erUnknownSystemVariable is ER_UNKNOWN_SYSTEM_VARIABLE.
const erUnknownSystemVariable = 1193

// setting is a global server variable the binlog needs set one way.
type setting struct {
	name string
	want string // upper case; ON reads as 1
	// mysqlOnly: the variable exists on MySQL only, and not on every
	// version; it is not asked on MariaDB and passes where unknown.
	mysqlOnly bool
}

var settings = []setting{
	{name: "log_bin", want: "1"},
	{name: "binlog_format", want: "ROW"},
	{name: "binlog_row_image", want: "FULL"},
	{name: "binlog_row_metadata", want: "FULL"},
	// MySQL ≥ 8.0.3: PARTIAL_JSON logs a JSON update as a diff
	// (PARTIAL_UPDATE_ROWS_EVENT, even with binlog_row_image=FULL), which
	// cachesync cannot apply: the stream would stop at the first one.
	{name: "binlog_row_value_options", want: "", mysqlOnly: true},
}

// checkSettings checks the settings of a server of info's flavor with
// read, which returns a global variable's value, or known=false if the
// server has no such variable.
func checkSettings(info ServerInfo, read func(name string) (value string, known bool, err error)) error {
	for _, w := range settings {
		if w.mysqlOnly && info.Flavor == "mariadb" {
			continue
		}
		got, known, err := read(w.name)
		if err != nil {
			return fmt.Errorf("server %s: read @@%s: %w", info.Version, w.name, err)
		}
		if !known && w.mysqlOnly {
			continue
		}
		if !known {
			return fmt.Errorf("server %s: has no variable %s; cachesync needs MariaDB ≥ 10.5 or MySQL ≥ 8.0", info.Version, w.name)
		}
		v := strings.ToUpper(got)
		if v == "ON" {
			v = "1"
		}
		if v != w.want {
			want := strings.Replace(w.want, "1", "ON", 1)
			if want == "" {
				want = "''"
			}
			return fmt.Errorf("server %s: %s is %q, cachesync needs %s=%s (set it in my.cnf or with SET GLOBAL)",
				info.Version, w.name, got, w.name, want)
		}
	}
	return nil
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

// ClockOffset estimates the server's clock minus this host's: commit
// times in the binlog are the server's, so now+offset is the server's now.
// One query; the error is the round trip's half, a few milliseconds.
func ClockOffset(ctx context.Context, db *sql.DB) (time.Duration, error) {
	var us int64
	t0 := time.Now()
	if err := db.QueryRowContext(ctx, "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)").Scan(&us); err != nil {
		return 0, fmt.Errorf("reading the server's clock: %w", err)
	}
	mid := t0.Add(time.Since(t0) / 2)
	return time.UnixMicro(us).Sub(mid), nil
}
