package binlog

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The replication stream over TLS, from a server that refuses plaintext
// (--require-secure-transport): mysql.tls makes the Source stream; without
// it the login is refused; with the wrong CA, or with its files gone since
// start-up, it never connects and says why.
func TestSourceTLS(t *testing.T) {
	f := testenv.MakeTLSFiles(t)
	m := testenv.StartMariaDB(t, testenv.MariaDBTLS(f))
	db := m.DB(t, "tlssrc")
	if _, err := db.Exec("CREATE TABLE w (id INT PRIMARY KEY, v VARCHAR(20))"); err != nil {
		t.Fatal(err)
	}
	start, err := CurrentPosition(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	// run runs a Source with tc (validated at load, like the daemon's,
	// unless the files are meant to be gone) until the test ends; done
	// gets Run's result.
	run := func(t *testing.T, tc tlsconf.Config, validate bool) (*Source, chan *Txn, chan error) {
		t.Helper()
		cfg := Config{Addr: m.Addr(), User: "root", Flavor: "mariadb", ServerID: 7101, TLS: tc}
		cfg.SetDefaults()
		if validate {
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		src := NewSource(cfg, "mariadb", []string{"tlssrc.w"}, zerolog.Nop(), prometheus.NewRegistry())
		ctx, cancel := context.WithCancel(context.Background())
		out, done, ended := make(chan *Txn, 10), make(chan error, 1), make(chan struct{})
		go func() { done <- src.Run(ctx, Start{Pos: start}, out); close(ended) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-ended:
			case <-time.After(10 * time.Second):
				t.Error("Source.Run did not return after cancel")
			}
		})
		return src, out, done
	}

	t.Run("mutual TLS streams", func(t *testing.T) {
		_, out, done := run(t, tlsconf.Config{CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}, true)
		if _, err := db.Exec("INSERT INTO w VALUES (1, 'over tls')"); err != nil {
			t.Fatal(err)
		}
		select {
		case tx := <-out:
			if len(tx.Changes) != 1 || tx.Changes[0].After[1] != "over tls" {
				t.Errorf("streamed %+v", tx.Changes)
			}
		case err := <-done:
			t.Fatalf("Source.Run returned %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no transaction over TLS within 10s")
		}
	})

	// The other go-mysql connections: the grant probe's binlog dump and
	// PositionOfGTID's.
	t.Run("grants and GTID lookup over TLS", func(t *testing.T) {
		cfg := Config{Addr: m.Addr(), User: "root", ServerID: 7102, TLS: tlsconf.Config{CA: f.CA}}
		cfg.SetDefaults()
		if err := CheckGrants(context.Background(), cfg, "mariadb", db, []string{"tlssrc.w"}); err != nil {
			t.Errorf("CheckGrants over TLS: %v", err)
		}
		var g string
		if err := db.QueryRow("SELECT BINLOG_GTID_POS(?, ?)", start.File, start.Pos).Scan(&g); err != nil || g == "" {
			t.Fatalf("BINLOG_GTID_POS(%s) = %q, %v", start, g, err)
		}
		if got, err := PositionOfGTID(context.Background(), cfg, "mariadb", g, 10*time.Second); err != nil || got != start {
			t.Errorf("PositionOfGTID over TLS: %s, %v; want %s", got, err, start)
		}
		cfg.TLS = tlsconf.Config{}
		if err := CheckGrants(context.Background(), cfg, "mariadb", db, nil); err == nil {
			t.Errorf("CheckGrants without TLS passed against a server that requires it")
		}
	})

	t.Run("plaintext refused", func(t *testing.T) {
		_, _, done := run(t, tlsconf.Config{}, true)
		select {
		case err := <-done:
			if !errors.Is(err, ErrFatal) || !strings.Contains(err.Error(), "1045") {
				t.Errorf("plaintext stream: %v, want a fatal 1045 (MariaDB's answer to insecure transport)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a plaintext stream from a server requiring TLS neither failed nor ended")
		}
	})

	// waitErr waits until the source's last error contains want.
	waitErr := func(t *testing.T, src *Source, want string) error {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if err := src.LastError(); err != nil && strings.Contains(err.Error(), want) {
				if src.Connected() {
					t.Errorf("connected despite %v", err)
				}
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no error with %q within 10s; last error %v", want, src.LastError())
		return nil
	}

	t.Run("wrong CA", func(t *testing.T) {
		src, _, _ := run(t, tlsconf.Config{CA: f.OtherCA}, true)
		if err := waitErr(t, src, "certificate signed by unknown authority"); !tlsconf.Permanent(err) {
			t.Errorf("%v: not recognised as a TLS failure", err)
		}
	})

	t.Run("files gone after start-up", func(t *testing.T) {
		ca := t.TempDir() + "/ca.pem"
		b, err := os.ReadFile(f.CA)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ca, b, 0o600); err != nil {
			t.Fatal(err)
		}
		tc := tlsconf.Config{CA: ca}
		if err := tc.Validate("mysql.tls"); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(ca); err != nil {
			t.Fatal(err)
		}
		src, _, _ := run(t, tc, false)
		waitErr(t, src, "mysql.tls: ca:")
	})
}
