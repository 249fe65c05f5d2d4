package tlsconf_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/tlsconf"
)

func ptr(b bool) *bool { return &b }

func TestValidate(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name string
		c    tlsconf.Config
		on   bool
		want []string // substrings of the error; nil: valid
	}{
		{"absent", tlsconf.Config{}, false, nil},
		{"enabled false", tlsconf.Config{Enabled: ptr(false)}, false, nil},
		{"enabled alone: system roots", tlsconf.Config{Enabled: ptr(true)}, true, nil},
		{"ca turns it on", tlsconf.Config{CA: f.CA}, true, nil},
		{"mutual", tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey, ServerName: "localhost"}, true, nil},
		{"insecure alone", tlsconf.Config{InsecureSkipVerify: true}, true, nil},
		{"enabled false with ca", tlsconf.Config{Enabled: ptr(false), CA: f.CA}, false, []string{"x.tls.enabled is false", "x.tls.ca is set"}},
		{"cert without key", tlsconf.Config{Cert: f.ClientCert}, true, []string{"x.tls.cert: set without x.tls.key"}},
		{"key without cert", tlsconf.Config{Key: f.ClientKey}, true, []string{"x.tls.key: set without x.tls.cert"}},
		{"ca missing", tlsconf.Config{CA: missing}, true, []string{"x.tls.ca", "missing.pem", "no such file"}},
		{"ca not PEM", tlsconf.Config{CA: notPEM}, true, []string{"x.tls.ca", "not.pem", "no PEM certificate"}},
		{"key of another certificate", tlsconf.Config{Cert: f.ClientCert, Key: f.ServerKey}, true, []string{"x.tls.cert", "x.tls.key", "does not match"}},
		{"key file missing", tlsconf.Config{Cert: f.ClientCert, Key: missing}, true, []string{"x.tls.key", "missing.pem"}},
		{"insecure with ca", tlsconf.Config{CA: f.CA, InsecureSkipVerify: true}, true, []string{"x.tls.insecure_skip_verify", "x.tls.ca would be ignored"}},
		{"insecure with server_name", tlsconf.Config{ServerName: "db", InsecureSkipVerify: true}, true, []string{"x.tls.insecure_skip_verify", "x.tls.server_name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.On(); got != tc.on {
				t.Errorf("On() = %v, want %v", got, tc.on)
			}
			err := tc.c.Validate("x.tls")
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// Client's configuration connects to a server with the test CA's
// certificate, presents the client certificate, and fails against
// another CA with an error Permanent recognises.
func TestClient(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	if tc, err := (tlsconf.Config{}).Client("h"); tc != nil || err != nil {
		t.Fatalf("Client of an absent block: %v, %v; want nil, nil", tc, err)
	}
	sc, err := f.ServerConfig(tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan string, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil && len(tc.ConnectionState().PeerCertificates) > 0 {
				peers <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
			}
			c.Close()
		}
	}()
	addr := l.Addr().String()
	dial := func(c tlsconf.Config, serverName string) error {
		tc, err := c.Client(serverName)
		if err != nil {
			return err
		}
		conn, err := tls.Dial("tcp", addr, tc)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Read(make([]byte, 1)) // the server's verdict on our certificate (TLS 1.3)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}

	good := tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}
	if err := dial(good, "127.0.0.1"); err != nil {
		t.Fatalf("mutual TLS with the test CA: %v", err)
	}
	if got := <-peers; got != "cachesync" {
		t.Errorf("server saw client certificate %q, want cachesync", got)
	}
	// server_name wins over the dialled host; the certificate names
	// localhost.
	named := good
	named.ServerName = "localhost"
	if err := dial(named, "10.9.9.9"); err != nil {
		t.Errorf("server_name localhost: %v", err)
	}
	for _, tc := range []struct {
		name string
		c    tlsconf.Config
		sn   string
	}{
		{"wrong CA", tlsconf.Config{CA: f.OtherCA, Cert: f.ClientCert, Key: f.ClientKey}, "127.0.0.1"},
		{"system roots", tlsconf.Config{Enabled: ptr(true), Cert: f.ClientCert, Key: f.ClientKey}, "127.0.0.1"},
		{"wrong name", tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey, ServerName: "db.example"}, ""},
		{"no client certificate", tlsconf.Config{CA: f.CA}, "127.0.0.1"},
	} {
		err := dial(tc.c, tc.sn)
		if err == nil {
			t.Errorf("%s: connected", tc.name)
			continue
		}
		if !tlsconf.Permanent(err) {
			t.Errorf("%s: %v: Permanent = false", tc.name, err)
		}
	}
	// Plaintext on the other side: not TLS, also permanent.
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	go func() {
		c, err := pl.Accept()
		if err == nil {
			fmt.Fprintf(c, "-ERR plaintext server here\r\n")
			c.Close()
		}
	}()
	tc, _ := good.Client("127.0.0.1")
	if _, err := tls.Dial("tcp", pl.Addr().String(), tc); err == nil || !tlsconf.Permanent(err) {
		t.Errorf("TLS to a plaintext server: %v; want an error Permanent recognises", err)
	}
	if tlsconf.Permanent(errors.New("connection refused")) || tlsconf.Permanent(nil) {
		t.Errorf("Permanent says yes to a non-TLS error")
	}
}

func TestServerValidate(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	for _, tc := range []struct {
		name string
		s    tlsconf.Server
		on   bool
		want []string
	}{
		{"absent", tlsconf.Server{}, false, nil},
		{"server certificate", tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey}, true, nil},
		{"mutual", tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey, ClientCA: f.CA}, true, nil},
		{"cert without key", tlsconf.Server{Cert: f.ServerCert}, true, []string{"admin.tls.cert: set without admin.tls.key"}},
		{"key without cert", tlsconf.Server{Key: f.ServerKey}, true, []string{"admin.tls.key: set without admin.tls.cert"}},
		{"client_ca alone", tlsconf.Server{ClientCA: f.CA}, true, []string{"admin.tls.client_ca", "needs admin.tls.cert"}},
		{"mismatched key", tlsconf.Server{Cert: f.ServerCert, Key: f.ClientKey}, true, []string{"admin.tls.cert", "admin.tls.key", "does not match"}},
		{"client_ca not PEM", tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey, ClientCA: f.ServerKey}, true, []string{"admin.tls.client_ca", "no PEM certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.s.On() != tc.on {
				t.Errorf("On() = %v", tc.s.On())
			}
			err := tc.s.Validate("admin.tls")
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				c, err := tc.s.Config()
				if err != nil || (c == nil) == tc.on {
					t.Fatalf("Config: %v, %v", c, err)
				}
				if c != nil && (tc.s.ClientCA != "") != (c.ClientAuth == tls.RequireAndVerifyClientCert) {
					t.Errorf("ClientAuth %v with client_ca %q", c.ClientAuth, tc.s.ClientCA)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
