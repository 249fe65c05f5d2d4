package api

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// HTTPS on both listeners: the public one with a server certificate, the
// admin one also requiring client certificates signed by the client CA.
func TestListenersTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	pub := testPublic(func(c *Config) { c.TLS = tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey} })
	adm := testAdmin(func(c *AdminConfig) {
		c.TLS = tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey, ClientCA: f.CA}
	})
	s := startServer(t, pub, adm, nil)
	public, admin := "https://"+s.PublicAddr().String(), "https://"+s.AdminAddr().String()

	ctc, err := f.ClientConfig() // trusts the CA, presents the client certificate
	if err != nil {
		t.Fatal(err)
	}
	noCert := ctc.Clone()
	noCert.Certificates = nil
	otherCA, err := os.ReadFile(f.OtherCA)
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := ctc.Clone()
	wrongCA.RootCAs = x509.NewCertPool()
	wrongCA.RootCAs.AppendCertsFromPEM(otherCA)
	get := func(tc *tls.Config, url string) (int, string, error) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.TLS == nil && strings.HasPrefix(url, "https:") {
			t.Errorf("GET %s: answered without TLS", url)
		}
		return resp.StatusCode, string(b), nil
	}

	if code, body, err := get(noCert, public+"/ok"); err != nil || code != 200 || body != "ok" {
		t.Errorf("public over HTTPS: %d %q %v", code, body, err)
	}
	if code, body, err := get(ctc, admin+"/livez"); err != nil || code != 200 {
		t.Errorf("admin over HTTPS with a client certificate: %d %q %v", code, body, err)
	}
	if _, _, err := get(noCert, admin+"/livez"); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("admin without a client certificate: %v, want the server to refuse (certificate required)", err)
	}
	if _, _, err := get(wrongCA, public+"/ok"); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("public with the wrong CA: %v", err)
	}
	// Plain HTTP to an HTTPS listener: net/http answers 400.
	if code, body, err := get(nil, "http://"+s.PublicAddr().String()+"/ok"); err != nil || code != http.StatusBadRequest || body == "ok" {
		t.Errorf("plain HTTP to the HTTPS listener: %d %q %v", code, body, err)
	}
}

// A listener whose files cannot be loaded any more fails Start, naming the
// section; nothing stays bound.
func TestListenerTLSFilesGone(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	adm := testAdmin(func(c *AdminConfig) { c.TLS = tlsconf.Server{Cert: f.ServerCert, Key: f.ServerKey} })
	if err := os.Remove(f.ServerKey); err != nil {
		t.Fatal(err)
	}
	h := NewHealth(adm.ReadyzInterval, adm.ReadyzTimeout)
	reg := prometheus.NewRegistry()
	s, err := NewServer(testPublic(nil), adm, h, reg, reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(t.Context())
	if err == nil {
		_ = s.Stop(t.Context())
		t.Fatal("started without the admin key")
	}
	if !strings.Contains(err.Error(), "admin.tls") || !strings.Contains(err.Error(), "server-key.pem") {
		t.Errorf("Start: %v, want admin.tls and the file", err)
	}
}
