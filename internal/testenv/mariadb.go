package testenv

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MariaDB is a private mariadbd process with ROW binlog (binlog_row_image and
// binlog_row_metadata FULL, server_id 1) listening on Host:Port. User root
// has an empty password over TCP. DataDir is a temporary directory that also
// holds the socket, the pid file, the binlogs and the logs (error.log and
// mariadbd.out for anything printed before error.log is opened).
//
// The methods are safe for concurrent use.
type MariaDB struct {
	Host     string
	Port     int
	User     string
	Password string
	DataDir  string
	Socket   string
	// TLS is the PKI of a server started with MariaDBTLS, nil otherwise.
	TLS *TLSFiles

	mu     sync.Mutex
	tlsKey string // the DSN's tls= name, registered with the driver
	bin    string
	tmpDir string   // --tmpdir: the shared /tmp made concurrent installs collide
	proc   *process // nil while stopped
	closed bool
}

// MariaDBOption configures NewMariaDB and StartMariaDB.
type MariaDBOption func(*MariaDB)

// MariaDBTLS starts the server with f's server certificate and CA
// (--ssl-cert, --ssl-key, --ssl-ca) and --require-secure-transport=ON:
// plaintext TCP connections are refused (MariaDB answers them with error
// 1045, access denied, where MySQL has 3159). Client certificates
// are verified against the CA when presented. DSN, DB and the readiness
// check connect over TLS, trusting the CA.
func MariaDBTLS(f *TLSFiles) MariaDBOption {
	return func(m *MariaDB) { m.TLS = f }
}

// NewMariaDB initializes a new data directory in a temporary directory with
// mariadb-install-db (a copy of the output of one run of it, see
// mariadbTemplate), starts mariadbd on a free port and waits (at most 60 s)
// until it accepts connections. If the port turns out to be taken, it tries
// again on another one. The caller must Close the server.
func NewMariaDB(opts ...MariaDBOption) (*MariaDB, error) {
	bin, err := LookBinary("mariadbd", "mariadb-server")
	if err != nil {
		return nil, err
	}
	installDB, err := LookBinary("mariadb-install-db", "mariadb-server")
	if err != nil {
		return nil, err
	}
	dir, err := mkdirTempForSocket("testenv-mariadb-")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "testenv-mariadb-tmp-")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv: %w", err)
	}
	m := &MariaDB{
		Host:    "127.0.0.1",
		User:    "root",
		DataDir: dir,
		Socket:  filepath.Join(dir, "mysqld.sock"),
		bin:     bin,
		tmpDir:  tmp,
	}
	for _, o := range opts {
		o(m)
	}
	if err := m.registerTLS(); err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := m.installDB(installDB); err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := onFreePorts(1, func(p []int) error { m.Port = p[0]; return m.start() }); err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(tmp)
		return nil, err
	}
	return m, nil
}

// StartMariaDB is NewMariaDB for tests: it registers Close with tb.Cleanup
// and fails the test with tb.Fatal if the server cannot be started.
func StartMariaDB(tb testing.TB, opts ...MariaDBOption) *MariaDB {
	tb.Helper()
	m, err := NewMariaDB(opts...)
	if err != nil {
		tb.Fatalf("testenv: start MariaDB: %v", err)
	}
	tb.Cleanup(m.Close)
	return m
}

// Addr returns the TCP address of the server, "127.0.0.1:PORT".
func (m *MariaDB) Addr() string {
	return m.Host + ":" + strconv.Itoa(m.Port)
}

// DSN returns a go-sql-driver/mysql DSN for database db (empty for none):
// user@tcp(127.0.0.1:PORT)/db?multiStatements=true&parseTime=true&interpolateParams=true,
// with &tls=NAME (a configuration registered with the driver that trusts
// the CA and presents the client certificate) for a MariaDBTLS server.
func (m *MariaDB) DSN(db string) string {
	user := m.User
	if m.Password != "" {
		user += ":" + m.Password
	}
	dsn := fmt.Sprintf("%s@tcp(%s)/%s?multiStatements=true&parseTime=true&interpolateParams=true", user, m.Addr(), db)
	if m.tlsKey != "" {
		dsn += "&tls=" + m.tlsKey
	}
	return dsn
}

// tlsKeys numbers the TLS configurations registered with the driver.
var tlsKeys atomic.Int64

// registerTLS registers the client side of m.TLS with the driver, for DSN.
func (m *MariaDB) registerTLS() error {
	if m.TLS == nil {
		return nil
	}
	tc, err := m.TLS.ClientConfig()
	if err != nil {
		return err
	}
	m.tlsKey = fmt.Sprintf("testenv-mariadb-%d", tlsKeys.Add(1))
	if err := mysql.RegisterTLSConfig(m.tlsKey, tc); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// DB creates database db if it does not exist (unless db is empty) and
// returns a pool connected to it, which tb.Cleanup closes. It fails the test
// on any error.
func (m *MariaDB) DB(tb testing.TB, db string) *sql.DB {
	tb.Helper()
	if db != "" {
		admin, err := sql.Open("mysql", m.DSN(""))
		if err != nil {
			tb.Fatalf("testenv: open MariaDB: %v", err)
		}
		_, err = admin.Exec("CREATE DATABASE IF NOT EXISTS `" + strings.ReplaceAll(db, "`", "``") + "`")
		admin.Close()
		if err != nil {
			tb.Fatalf("testenv: create database %q: %v", db, err)
		}
	}
	pool, err := sql.Open("mysql", m.DSN(db))
	if err != nil {
		tb.Fatalf("testenv: open MariaDB database %q: %v", db, err)
	}
	tb.Cleanup(func() { pool.Close() })
	if err := pool.Ping(); err != nil {
		tb.Fatalf("testenv: connect to MariaDB database %q: %v", db, err)
	}
	return pool
}

// Stop shuts the server down gracefully (SIGTERM) and waits until it has
// exited. Stopping a stopped server does nothing.
func (m *MariaDB) Stop() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return nil
	}
	err := m.proc.stop()
	m.proc = nil
	if err != nil {
		return fmt.Errorf("testenv: stop mariadbd: %w%s", err, logTails(m.logs()...))
	}
	return nil
}

// Kill kills the server with SIGKILL, like a crash, and waits until it has
// PID is the server's process id (0 while stopped), for benchmarks that
// account its CPU time.
func (m *MariaDB) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc.pid()
}

// exited. Killing a stopped server does nothing.
func (m *MariaDB) Kill() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		m.proc.kill()
		m.proc = nil
	}
	return nil
}

// Start starts a stopped or killed server again on the same port with the
// same data directory (running crash recovery after Kill) and waits until it
// accepts connections. It is an error to Start a running or closed server.
func (m *MariaDB) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("testenv: start mariadbd: server is closed")
	}
	if m.proc != nil && !m.proc.exited() {
		return errors.New("testenv: start mariadbd: server is already running")
	}
	return m.start()
}

// Close kills the server (its data is discarded, so there is no point in a
// graceful shutdown) and removes its data directory. Calling it again does
// nothing.
func (m *MariaDB) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	if m.proc != nil {
		m.proc.kill()
		m.proc = nil
	}
	os.RemoveAll(m.DataDir)
	os.RemoveAll(m.tmpDir)
	if m.tlsKey != "" {
		mysql.DeregisterTLSConfig(m.tlsKey)
	}
}

// installDB fills m.DataDir with the system tables: a copy of the data
// directory mariadb-install-db made once for this mariadbd (mariadbTemplate),
// as if it had run here. The install takes seconds (bootstrap, fsyncs), the
// copy a fraction of one.
func (m *MariaDB) installDB(bin string) error {
	tmpl, err := mariadbTemplate(bin, m.bin)
	if err != nil {
		return err
	}
	return copyDir(tmpl, m.DataDir)
}

// installArgs are the arguments of mariadb-install-db for dataDir.
func installArgs(dataDir, tmpDir string) []string {
	args := []string{"--no-defaults"}
	if os.Geteuid() == 0 {
		// Without root, mariadb-install-db cannot switch users and runs as
		// the current one anyway.
		args = append(args, "--user=root")
	}
	return append(args,
		"--datadir="+dataDir,
		"--tmpdir="+tmpDir,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
	)
}

// runInstallDB runs mariadb-install-db (bin) into the empty dataDir.
func runInstallDB(bin, dataDir, tmpDir string) error {
	args := installArgs(dataDir, tmpDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*startTimeout)
	defer cancel()
	logPath := filepath.Join(dataDir, "install.log")
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	_ = os.WriteFile(logPath, out, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %s %s: %w%s", bin, strings.Join(args, " "), err, logTails(logPath))
	}
	return nil
}

var (
	templateMu  sync.Mutex
	templateDir string // this process's mariadbTemplate, once made or found
)

// mariadbTemplate returns a data directory made by mariadb-install-db (bin)
// for mariadbd (server) and never started, to be copied for each server. It
// is kept between test processes and runs in the user's cache directory
// (like Go's build cache), under a name made of the two binaries' paths,
// sizes and modification times and of the effective user (root or not), so
// an upgrade of MariaDB makes a new one; it is made in a temporary directory
// beside it and renamed into place, so a process never sees a partial one.
// Templates of other MariaDB versions are removed.
func mariadbTemplate(bin, server string) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateDir != "" {
		return templateDir, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	base = filepath.Join(base, "cachesync-testenv")
	h := sha256.New()
	fmt.Fprintf(h, "euid-root=%v\n", os.Geteuid() == 0)
	for _, p := range []string{bin, server} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("testenv: %w", err)
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	name := "mariadb-" + hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(base, name)
	if templateComplete(dir) {
		templateDir = dir
		return dir, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	work, err := os.MkdirTemp(base, ".install-")
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	defer os.RemoveAll(work)
	data, tmp := filepath.Join(work, "data"), filepath.Join(work, "tmp")
	for _, d := range []string{data, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", fmt.Errorf("testenv: %w", err)
		}
	}
	if err := runInstallDB(bin, data, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(data, dir); err != nil && !templateComplete(dir) {
		// Not another process's template: a damaged one (renames put only
		// complete ones there). Move it out of the way, into work.
		os.Rename(dir, filepath.Join(work, "damaged"))
		if err := os.Rename(data, dir); err != nil && !templateComplete(dir) {
			return "", fmt.Errorf("testenv: MariaDB template: %w", err)
		}
	}
	if old, _ := filepath.Glob(filepath.Join(base, "mariadb-*")); len(old) > 0 {
		for _, o := range old {
			if o != dir {
				os.RemoveAll(o)
			}
		}
	}
	templateDir = dir
	return dir, nil
}

// templateComplete reports whether dir holds a data directory
// mariadb-install-db finished.
func templateComplete(dir string) bool {
	for _, f := range []string{"ibdata1", "mysql/user.frm", "mysql/global_priv.frm"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// copyDir copies the files and directories in src into the existing
// directory dst, with their permission bits.
func copyDir(src, dst string) error {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Mkdir(to, info.Mode().Perm())
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		return copyFile(p, to, info.Mode().Perm())
	})
	if err != nil {
		return fmt.Errorf("testenv: copy the MariaDB template: %w", err)
	}
	return nil
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// args returns the mariadbd command line.
func (m *MariaDB) args() []string {
	args := []string{"--no-defaults"}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	d := m.DataDir
	if m.TLS != nil {
		args = append(args,
			"--ssl-ca="+m.TLS.CA,
			"--ssl-cert="+m.TLS.ServerCert,
			"--ssl-key="+m.TLS.ServerKey,
			"--require-secure-transport=ON",
		)
	}
	return append(args,
		"--datadir="+d,
		"--tmpdir="+m.tmpDir,
		"--bind-address="+m.Host,
		"--port="+strconv.Itoa(m.Port),
		"--socket="+m.Socket,
		"--pid-file="+filepath.Join(d, "mysqld.pid"),
		"--log-error="+filepath.Join(d, "error.log"),
		"--log-bin="+filepath.Join(d, "binlog"),
		"--binlog-format=ROW",
		"--binlog-row-image=FULL",
		"--binlog-row-metadata=FULL",
		"--server-id=1",
		"--skip-name-resolve",
		"--innodb-buffer-pool-size=128M",
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
		"--max-connections=500",
	)
}

// logs returns the paths of the server's logs.
func (m *MariaDB) logs() []string {
	return []string{filepath.Join(m.DataDir, "error.log"), filepath.Join(m.DataDir, "mariadbd.out")}
}

// start starts mariadbd and waits until it answers a ping; m.mu must be held
// or m not yet shared. On failure the process is gone and the error holds the
// end of the logs; it wraps errAddrInUse if the port was taken.
func (m *MariaDB) start() error {
	logs := m.logs()
	offset := fileSize(logs[0])
	p, err := startProcess(m.bin, m.args(), nil, logs[1])
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	cfg := mysql.NewConfig()
	cfg.User = m.User
	cfg.Passwd = m.Password
	cfg.Net = "tcp"
	cfg.Addr = m.Addr()
	cfg.Timeout = time.Second
	if m.TLS != nil {
		if cfg.TLS, err = m.TLS.ClientConfig(); err != nil {
			p.kill()
			return err
		}
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		p.kill()
		return fmt.Errorf("testenv: %w", err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxIdleConns(0)
	if err := p.waitReady(db.PingContext); err != nil {
		p.kill()
		if addrInUse(logs[0], offset) {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("testenv: start mariadbd on %s (data directory %s): %w%s", m.Addr(), m.DataDir, err, logTails(logs...))
	}
	m.proc = p
	return nil
}

// mkdirTempForSocket makes a temporary directory whose path is short enough
// for a Unix socket inside it (at most 107 bytes on Linux), falling back to
// /tmp if $TMPDIR is too long.
func mkdirTempForSocket(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	if len(dir) <= 80 {
		return dir, nil
	}
	os.RemoveAll(dir)
	dir, err = os.MkdirTemp("/tmp", pattern)
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	return dir, nil
}
