package seckill

import (
	"fmt"

	"github.com/cachesync/cachesync/binlog"
)

// Account is the sale's own MySQL account (`seckill.mysql`), so that the
// process serving reservations need not hold the CDC account's
// REPLICATION SLAVE: it needs only the sale's grants on its tables (see
// Store.CheckGrants). Unset, the sale uses mysql.user. The server, TLS
// and the rest come from mysql.
type Account struct {
	User     string `yaml:"user"`
	Password string `yaml:"password"`
}

// validate refuses a password without a user.
func (a Account) validate() error {
	if a.User == "" && a.Password != "" {
		return fmt.Errorf("seckill.mysql.password: set without seckill.mysql.user")
	}
	return nil
}

// MySQL returns the connection settings of the sale's pool: mc with the
// sale's account, if it has one.
func (c *Config) MySQL(mc binlog.Config) binlog.Config {
	if c.Account.User != "" {
		mc.User, mc.Password = c.Account.User, c.Account.Password
	}
	return mc
}
