package seckill

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cachesync/cachesync/binlog"
)

// ErrGrants wraps the privileges CheckGrants found missing.
var ErrGrants = errors.New("missing privileges")

// grantProbes are the statement kinds the sale runs, one per privilege and
// table, each written to change nothing (WHERE 1 = 0): the server checks
// the privilege before it looks for rows.
var grantProbes = []struct {
	priv, table string
	query       func(s *Store) string
}{
	{"SELECT", "sk_items", func(s *Store) string { return "SELECT id, stock FROM " + s.items + " LIMIT 0" }},
	{"UPDATE", "sk_items", func(s *Store) string { return "UPDATE " + s.items + " SET stock = stock WHERE 1 = 0" }},
	{"SELECT", "sk_orders", func(s *Store) string { return "SELECT order_id FROM " + s.orders + " LIMIT 0" }},
	{"INSERT", "sk_orders", func(s *Store) string {
		return "INSERT INTO " + s.orders + " (order_id, user_id, item_id, status, reason, reserved_at) SELECT '', 0, 0, 'failed', '', NOW(6) FROM DUAL WHERE 1 = 0"
	}},
	{"UPDATE", "sk_orders", func(s *Store) string { return "UPDATE " + s.orders + " SET status = status WHERE 1 = 0" }},
	{"INSERT", "sk_failures", func(s *Store) string {
		return "INSERT INTO " + s.fails + " (order_id, item_id, user_id, attempts, error, payload) SELECT '', 0, 0, 0, '', '' FROM DUAL WHERE 1 = 0"
	}},
}

// CheckGrants probes, in a transaction it rolls back, each privilege the
// sale of cfg needs on its tables, and for the jobs role (rebuilds and the
// drift check wait for CDC to pass the binlog position) reading the binlog
// position; it returns every missing one (wrapping ErrGrants) with the
// GRANT that gives it. user and addr name the account in the message. A
// missing table is an error of its own (load seckill/schema.sql).
func (s *Store) CheckGrants(ctx context.Context, cfg *Config, user, addr string) error {
	database := cfg.Database
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // nothing was written
	var missing []string
	for _, p := range grantProbes {
		_, err := tx.ExecContext(ctx, p.query(s))
		switch {
		case err == nil:
		case binlog.Refused(err) != "":
			missing = append(missing, fmt.Sprintf("GRANT %s ON %s.%s", p.priv, database, p.table))
		default:
			return fmt.Errorf("seckill: probe %s on %s.%s: %w", p.priv, database, p.table, err)
		}
	}
	if cfg.has(RoleJobs) {
		switch _, err := binlog.CurrentPosition(ctx, s.db); {
		case binlog.Refused(err) != "":
			missing = append(missing, "GRANT BINLOG MONITOR ON *.* (REPLICATION CLIENT on MySQL: the jobs role reads the binlog position)")
		case err != nil:
			return fmt.Errorf("seckill: probe reading the binlog position: %w", err)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("seckill: %w for mysql user %q at %s:\n  - %s", ErrGrants, user, addr, strings.Join(missing, "\n  - "))
	}
	return nil
}
