package tlsconf

import (
	"crypto/tls"
	"fmt"
	"time"
)

// Server is a listener's TLS block (http.tls, admin.tls): the server's
// certificate and key and, for mutual TLS, the CA that must sign every
// client's certificate. Absent, the listener serves plain HTTP.
type Server struct {
	// Cert and Key are the PEM certificate (chain) and private key the
	// listener presents; both or neither.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ClientCA is a PEM bundle; when set, a client must present a
	// certificate signed by it (for the admin listener: Prometheus, the
	// kubelet and the operators' tools hold one).
	ClientCA string `yaml:"client_ca"`
}

// On reports whether the listener serves HTTPS.
func (s Server) On() bool { return s.Cert != "" || s.Key != "" || s.ClientCA != "" }

// Validate reports the first problem, naming the field under prefix (such
// as "admin.tls"): a certificate without its key or the reverse, a client
// CA without a certificate, unreadable files, a key that does not match,
// an expired certificate.
func (s Server) Validate(prefix string) error {
	if !s.On() {
		return nil
	}
	switch {
	case s.Cert == "" && s.Key == "":
		return fmt.Errorf("%s.client_ca: needs %s.cert and %s.key (client certificates are asked for over TLS)", prefix, prefix, prefix)
	case s.Key == "":
		return fmt.Errorf("%s.cert: set without %s.key", prefix, prefix)
	case s.Cert == "":
		return fmt.Errorf("%s.key: set without %s.cert", prefix, prefix)
	}
	cert, err := tls.LoadX509KeyPair(s.Cert, s.Key)
	if err != nil {
		return fmt.Errorf("%s.cert %q and %s.key %q: %w", prefix, s.Cert, prefix, s.Key, err)
	}
	if leaf := cert.Leaf; leaf != nil && time.Now().After(leaf.NotAfter) {
		return fmt.Errorf("%s.cert %q: expired on %s", prefix, s.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if s.ClientCA != "" {
		if _, err := loadCA(s.ClientCA); err != nil {
			return fmt.Errorf("%s.client_ca: %w", prefix, err)
		}
	}
	return nil
}

// Config returns the listener's configuration, or nil when TLS is off.
// TLS 1.2 at least; with ClientCA, client certificates are required and
// verified.
func (s Server) Config() (*tls.Config, error) {
	if !s.On() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.Cert, s.Key)
	if err != nil {
		return nil, fmt.Errorf("cert %q and key %q: %w", s.Cert, s.Key, err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if s.ClientCA != "" {
		pool, err := loadCA(s.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("client_ca: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
