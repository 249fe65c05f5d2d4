package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles is a private PKI made for a test, as PEM files in Dir: a CA,
// a server certificate for 127.0.0.1, ::1 and localhost (good for client
// authentication too: servers that connect to one another present it),
// and a client certificate (CN "cachesync"), both signed by the CA, and a
// second CA, OtherCA, that signed nothing here (the wrong CA). Keys are
// ECDSA P-256 in PKCS #8, which MariaDB's and Redis's OpenSSL, and Go, all
// read. The certificates are valid from an hour ago for a day.
type TLSFiles struct {
	Dir        string
	CA         string // the CA's certificate
	ServerCert string
	ServerKey  string
	ClientCert string
	ClientKey  string
	OtherCA    string // another CA's certificate
}

// NewTLSFiles makes the PKI in dir, which must exist.
func NewTLSFiles(dir string) (*TLSFiles, error) {
	f := &TLSFiles{
		Dir:        dir,
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
		OtherCA:    filepath.Join(dir, "other-ca.pem"),
	}
	ca, caKey, err := makeCA("cachesync test CA", f.CA)
	if err != nil {
		return nil, err
	}
	if _, _, err := makeCA("cachesync other test CA", f.OtherCA); err != nil {
		return nil, err
	}
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		// Client authentication too: a Redis replica or Sentinel presents
		// its server certificate when it connects to another node.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if err := makeLeaf(server, ca, caKey, f.ServerCert, f.ServerKey); err != nil {
		return nil, err
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "cachesync"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := makeLeaf(client, ca, caKey, f.ClientCert, f.ClientKey); err != nil {
		return nil, err
	}
	return f, nil
}

// MakeTLSFiles is NewTLSFiles in a directory of tb.TempDir(); it fails the
// test on error.
func MakeTLSFiles(tb testing.TB) *TLSFiles {
	tb.Helper()
	f, err := NewTLSFiles(tb.TempDir())
	if err != nil {
		tb.Fatalf("testenv: make TLS files: %v", err)
	}
	return f
}

// ClientConfig trusts the CA and presents the client certificate.
func (f *TLSFiles) ClientConfig() (*tls.Config, error) {
	pool, err := certPool(f.CA)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ServerConfig presents the server certificate and verifies client
// certificates against the CA as auth says (tls.RequireAndVerifyClientCert
// for mutual TLS).
func (f *TLSFiles) ServerConfig(auth tls.ClientAuthType) (*tls.Config, error) {
	pool, err := certPool(f.CA)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: auth, MinVersion: tls.VersionTLS12}, nil
}

func certPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("testenv: no certificate in %s", path)
	}
	return pool, nil
}

// makeCA writes a self-signed CA certificate to certPath.
func makeCA(name, certPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	setValidity(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: %w", err)
	}
	return cert, key, writePEM(certPath, "CERTIFICATE", der)
}

// makeLeaf signs tmpl with the CA and writes the certificate and its key.
func makeLeaf(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	setValidity(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(keyPath, "PRIVATE KEY", pkcs8)
}

func setValidity(c *x509.Certificate) {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	c.SerialNumber = serial
	c.NotBefore = time.Now().Add(-time.Hour)
	c.NotAfter = time.Now().Add(24 * time.Hour)
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}
