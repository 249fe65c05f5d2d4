// Package tlsconf is the TLS block shared by the daemon's client
// connections (mysql.tls, redis.tls, seckill.kafka.tls): PEM files named in
// the configuration, checked at load, and the *tls.Config built from them.
//
// An absent block means plaintext. TLS is on when the block sets
// enabled: true or any of ca, cert, key, server_name and
// insecure_skip_verify; enabled: true alone verifies the server against the
// system's roots. The files are read when a client is built (at start, and
// by the binlog stream at each reconnect); replacing them takes a restart
// for the other connections.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Config is one connection's TLS block.
type Config struct {
	// Enabled switches TLS on without any other field (the server is
	// then verified against the system's roots). Unset, TLS is on when
	// another field is set; false with another field set is refused.
	Enabled *bool `yaml:"enabled"`
	// CA is a PEM bundle of the certificates that may sign the server's
	// certificate, instead of the system's roots.
	CA string `yaml:"ca"`
	// Cert and Key are the PEM client certificate (chain) and its private
	// key, for servers that require client certificates (mutual TLS).
	// One without the other is refused.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ServerName is the name the server's certificate must carry; by
	// default the host of the address dialled.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any server certificate: encryption
	// without authentication, open to a man in the middle. For tests
	// only; refused together with ca or server_name, which it would
	// ignore.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// On reports whether the connection uses TLS.
func (c Config) On() bool {
	if c.Enabled != nil {
		return *c.Enabled
	}
	return c.anySet() != ""
}

// anySet names the first field other than enabled that is set, or "".
func (c Config) anySet() string {
	switch {
	case c.CA != "":
		return "ca"
	case c.Cert != "":
		return "cert"
	case c.Key != "":
		return "key"
	case c.ServerName != "":
		return "server_name"
	case c.InsecureSkipVerify:
		return "insecure_skip_verify"
	}
	return ""
}

// Validate reports the first problem, naming the field under prefix (such
// as "mysql.tls"): contradictory fields, unreadable files, a CA file
// without certificates, a certificate that does not match its key or has
// expired.
func (c Config) Validate(prefix string) error {
	if c.Enabled != nil && !*c.Enabled {
		if f := c.anySet(); f != "" {
			return fmt.Errorf("%s.enabled is false but %s.%s is set: remove one", prefix, prefix, f)
		}
		return nil
	}
	if !c.On() {
		return nil
	}
	if c.InsecureSkipVerify {
		if c.CA != "" {
			return fmt.Errorf("%s.insecure_skip_verify: the server's certificate is not verified, so %s.ca would be ignored; remove one", prefix, prefix)
		}
		if c.ServerName != "" {
			return fmt.Errorf("%s.insecure_skip_verify: the server's certificate is not verified, so %s.server_name would be ignored; remove one", prefix, prefix)
		}
	}
	if c.Cert != "" && c.Key == "" {
		return fmt.Errorf("%s.cert: set without %s.key", prefix, prefix)
	}
	if c.Key != "" && c.Cert == "" {
		return fmt.Errorf("%s.key: set without %s.cert", prefix, prefix)
	}
	if c.CA != "" {
		if _, err := loadCA(c.CA); err != nil {
			return fmt.Errorf("%s.ca: %w", prefix, err)
		}
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return fmt.Errorf("%s.cert %q and %s.key %q: %w", prefix, c.Cert, prefix, c.Key, err)
		}
		if leaf := cert.Leaf; leaf != nil && time.Now().After(leaf.NotAfter) {
			return fmt.Errorf("%s.cert %q: expired on %s", prefix, c.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// Client returns the client configuration, or nil when TLS is off. The
// server's name is ServerName, else serverName; leave both empty where the
// client library fills in the host it dials (crypto/tls dialers,
// go-sql-driver/mysql, sarama). TLS 1.2 at least.
func (c Config) Client(serverName string) (*tls.Config, error) {
	if !c.On() {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // asked for in the configuration, refused with ca or server_name
	}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	if c.CA != "" {
		pool, err := loadCA(c.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		tc.RootCAs = pool
	}
	if c.Cert != "" || c.Key != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("cert %q and key %q: %w", c.Cert, c.Key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// loadCA reads a PEM bundle that must hold at least one certificate.
func loadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%q: no PEM certificate in it", path)
	}
	return pool, nil
}

// Permanent reports whether err is a TLS failure that retrying does not
// cure: the server's certificate did not verify (unknown authority, wrong
// name, expired), the server refused ours (a TLS alert such as
// bad_certificate or certificate_required), or the peer does not speak TLS
// at all.
func Permanent(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		header   tls.RecordHeaderError
		op       *net.OpError
	)
	if errors.As(err, &op) && op.Op == "remote error" { // an alert the server sent
		return true
	}
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &header)
}
