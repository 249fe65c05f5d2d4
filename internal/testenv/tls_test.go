package testenv

import (
	"bufio"
	"crypto/tls"
	"database/sql"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/go-sql-driver/mysql"
)

// The TLS servers speak TLS with the test's private CA and refuse
// plaintext: a test that forgot to turn TLS on in a client fails.
func TestMariaDBTLS(t *testing.T) {
	t.Parallel()
	f := MakeTLSFiles(t)
	m := StartMariaDB(t, MariaDBTLS(f))
	db := m.DB(t, "")
	var cipher, version string
	if err := db.QueryRow("SHOW SESSION STATUS LIKE 'Ssl_cipher'").Scan(&version, &cipher); err != nil {
		t.Fatal(err)
	}
	if cipher == "" {
		t.Errorf("DB's connection is not encrypted (Ssl_cipher empty)")
	}
	if got := queryString(t, db, "SELECT @@require_secure_transport"); got != "1" {
		t.Errorf("require_secure_transport = %s, want 1", got)
	}

	plain := mysql.NewConfig()
	plain.User, plain.Net, plain.Addr = m.User, "tcp", m.Addr()
	conn, err := mysql.NewConnector(plain)
	if err != nil {
		t.Fatal(err)
	}
	pdb := sql.OpenDB(conn)
	defer pdb.Close()
	// MariaDB refuses insecure transport as a failed login (MySQL has
	// error 3159 for it); the same login over TLS worked above.
	var me *mysql.MySQLError
	if err := pdb.Ping(); !errors.As(err, &me) || me.Number != 1045 {
		t.Errorf("plaintext connection: %v, want error 1045 (access denied)", err)
	}
}

func TestRedisTLS(t *testing.T) {
	t.Parallel()
	f := MakeTLSFiles(t)
	r := StartRedisTLS(t, f, "--tls-auth-clients", "yes")
	tc, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := redisCommand(t, r.Addr(), tc); err != nil || got != "+PONG\r\n" {
		t.Errorf("PING over TLS with a client certificate: %q, %v", got, err)
	}
	// --tls-auth-clients yes: no client certificate, no answer.
	noCert := tc.Clone()
	noCert.Certificates = nil
	if got, err := redisCommand(t, r.Addr(), noCert); err == nil {
		t.Errorf("PING over TLS without a client certificate answered %q", got)
	}
	if got, err := redisCommand(t, r.Addr(), nil); err == nil {
		t.Errorf("plaintext PING answered %q", got)
	}
	// Restarted, it still speaks TLS on the same port.
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := redisCommand(t, r.Addr(), tc); err != nil || got != "+PONG\r\n" {
		t.Errorf("PING over TLS after a restart: %q, %v", got, err)
	}
}

// redisCommand sends PING to addr (over TLS unless tc is nil) and returns
// the answer's first line.
func redisCommand(t *testing.T, addr string, tc *tls.Config) (string, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 2 * time.Second}
	var (
		c   net.Conn
		err error
	)
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestKafkaTLS(t *testing.T) {
	t.Parallel()
	f := MakeTLSFiles(t)
	sc, err := f.ServerConfig(tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	k := StartKafka(t, KafkaTLS(sc), KafkaTopic("t", 1))
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V4_0_0_0
	cfg.Net.DialTimeout = 2 * time.Second
	cfg.Metadata.Retry.Max = 0
	cfg.Producer.Return.Successes = true
	cfg.Net.TLS.Enable = true
	if cfg.Net.TLS.Config, err = f.ClientConfig(); err != nil {
		t.Fatal(err)
	}
	p, err := sarama.NewSyncProducer(k.Brokers(), cfg)
	if err != nil {
		t.Fatalf("producer over TLS: %v", err)
	}
	if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "t", Value: sarama.StringEncoder("v")}); err != nil {
		t.Errorf("produce over TLS: %v", err)
	}
	p.Close()

	plain := sarama.NewConfig()
	plain.Version = sarama.V4_0_0_0
	plain.Net.DialTimeout, plain.Net.ReadTimeout = 2*time.Second, 2*time.Second
	plain.Metadata.Retry.Max = 0
	if c, err := sarama.NewClient(k.Brokers(), plain); err == nil {
		c.Close()
		t.Errorf("a plaintext client connected")
	} else if !strings.Contains(err.Error(), "run out of available brokers") {
		t.Logf("plaintext client: %v", err)
	}
}
