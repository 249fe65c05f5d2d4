package binlog

import (
	"crypto/tls"
	"fmt"
)

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
