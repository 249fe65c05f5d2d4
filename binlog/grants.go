package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	sqldriver "github.com/go-sql-driver/mysql"
)

// ErrGrants wraps the privileges CheckGrants found missing.
var ErrGrants = errors.New("missing privileges")

// CheckGrants probes, as the configured user, each privilege the CDC
// needs, and returns every missing one (wrapping ErrGrants) with the GRANT
// that gives it. Probing rather than reading SHOW GRANTS covers roles,
// wildcards and partial revokes alike:
//   - reading the binlog position: BINLOG MONITOR (MariaDB) or
//     REPLICATION CLIENT (MySQL);
//   - the binlog dump: REPLICATION SLAVE, by starting a dump at the
//     current position and closing it at its first event (under a server
//     id of its own, probeServerID, so no live stream is displaced);
//   - SELECT on every ruled table ("schema.table"), which the snapshot
//     reads.
//
// Errors other than a refusal (the server unreachable) are returned as
// they are.
func CheckGrants(ctx context.Context, cfg Config, flavor string, db *sql.DB, tables []string) error {
	var missing []string
	monitor := "BINLOG MONITOR"
	if flavor != "mariadb" {
		monitor = "REPLICATION CLIENT"
	}
	pos, err := CurrentPosition(ctx, db)
	switch {
	case isRefusal(err):
		missing = append(missing, fmt.Sprintf("GRANT %s ON *.* (reading the binlog position: %v)", monitor, err))
		pos = Position{Pos: 4} // the dump is probed from the server's first file
	case err != nil:
		return err
	}
	switch err := probeDump(ctx, cfg, flavor, pos); {
	case isRefusal(err):
		missing = append(missing, fmt.Sprintf("GRANT REPLICATION SLAVE ON *.* (the binlog dump: %v)", err))
	case err != nil:
		return fmt.Errorf("probe the binlog dump: %w", err)
	}
	for _, t := range tables {
		schema, name, _ := strings.Cut(t, ".")
		rows, err := db.QueryContext(ctx, "SELECT 1 FROM "+quoteName(schema)+"."+quoteName(name)+" LIMIT 0")
		if err == nil {
			rows.Close()
			continue
		}
		if !isRefusal(err) {
			return fmt.Errorf("probe SELECT on %s: %w", t, err)
		}
		missing = append(missing, fmt.Sprintf("GRANT SELECT ON %s (the snapshot reads it: %v)", t, err))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w for mysql user %q at %s:\n  - %s", ErrGrants, cfg.User, cfg.Addr, strings.Join(missing, "\n  - "))
	}
	return nil
}

// probeDump starts a binlog dump at pos and returns at its first event
// (nil) or error.
func probeDump(ctx context.Context, cfg Config, flavor string, pos Position) error {
	sc := cfg.syncerConfig(flavor, probeServerID(cfg.ServerID))
	sc.RawModeEnabled = true
	syncer := replication.NewBinlogSyncer(sc)
	defer syncer.Close()
	st, err := syncer.StartSync(mysql.Position{Name: pos.File, Pos: pos.Pos})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = st.GetEvent(ctx)
	return err
}

// probeServerID is the server id of CheckGrants' dump: the daemon's with
// the top bit flipped, so it displaces neither this daemon's stream nor
// (with consecutive ids) another daemon's.
func probeServerID(id uint32) uint32 {
	if p := id ^ 1<<31; p != 0 {
		return p
	}
	return 1
}

// isRefusal reports whether err is the server refusing a privilege or
// the login (by number, from either driver).
func isRefusal(err error) bool { return Refused(err) != "" }

// Refused reports why the server refused err's login or privilege (the
// error number's meaning), or "" when err is not such a refusal: an error
// no retry cures.
func Refused(err error) string {
	var me *mysql.MyError
	if errors.As(err, &me) {
		return refused[me.Code]
	}
	var se *sqldriver.MySQLError
	if errors.As(err, &se) {
		return refused[se.Number]
	}
	return ""
}
