package binlog

import (
	"crypto/tls"
	"fmt"
	"log/slog"

	"github.com/go-mysql-org/go-mysql/replication"
)

// syncerConfig is what every go-mysql connection of c shares (the
// stream, the grant probe's dump, PositionOfGTID's): the server, the
// account, TLS, no reconnects of go-mysql's own, no go-mysql log. Callers
// set what differs.
func (c *Config) syncerConfig(flavor string, serverID uint32) replication.BinlogSyncerConfig {
	host, port := c.hostPort()
	return replication.BinlogSyncerConfig{
		ServerID:         serverID,
		Flavor:           flavor,
		Host:             host,
		Port:             port,
		User:             c.User,
		Password:         c.Password,
		TLSConfig:        c.replicationTLS(host),
		DisableRetrySync: true,
		Logger:           slog.New(slog.DiscardHandler),
	}
}

// replicationTLS is the TLS configuration of go-mysql's connections (the
// replication stream, the grant probe's dump, PositionOfGTID's), nil
// for plaintext. go-mysql does not fill in the server's name, so it is the
// host of mysql.addr unless mysql.tls.server_name says otherwise. The
// files are read again at each connection (they were checked at load);
// if that fails now (a file removed or replaced by a bad one), the
// configuration returned fails every handshake with that error, so the
// stream reports it and retries, and never falls back to plaintext.
func (c *Config) replicationTLS(host string) *tls.Config {
	tc, err := c.TLS.Client(host)
	if err != nil {
		err = fmt.Errorf("mysql.tls: %w", err)
		return &tls.Config{
			// Nothing is trusted: the handshake fails in VerifyConnection,
			// before the credentials are sent.
			InsecureSkipVerify: true, //nolint:gosec // every connection is refused below
			VerifyConnection:   func(tls.ConnectionState) error { return err },
		}
	}
	return tc
}

// SQLTLS is the TLS configuration for go-sql-driver/mysql's Config.TLS
// (nil for plaintext); the driver fills in the server's name from
// mysql.addr unless mysql.tls.server_name is set. A DSN string cannot
// carry it: open the pool with mysql.NewConnector.
func (c *Config) SQLTLS() (*tls.Config, error) {
	tc, err := c.TLS.Client("")
	if err != nil {
		return nil, fmt.Errorf("mysql.tls: %w", err)
	}
	return tc, nil
}
