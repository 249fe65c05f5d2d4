package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Redis is a private redis-server process listening on Host:Port without any
// persistence: every Start, including a restart after Stop or Kill, begins
// with an empty data set. Dir is a temporary directory that holds its log,
// redis.log.
//
// The methods are safe for concurrent use.
type Redis struct {
	Host string
	Port int
	Dir  string
	// TLS is the PKI of a server started with NewRedisTLS, nil otherwise.
	TLS *TLSFiles

	mu     sync.Mutex
	bin    string
	args   []string // extra arguments, from NewRedisWith
	proc   *process // nil while stopped
	closed bool
}

// NewRedis starts redis-server on a free port with a private directory and
// no persistence (--save "" --appendonly no) and waits (at most 60 s) until
// it answers PING. If the port turns out to be taken, it tries again on
// another one. The caller must Close the server.
func NewRedis() (*Redis, error) {
	return NewRedisWith()
}

// NewRedisWith is NewRedis with extra redis-server arguments, such as
// "--replicaof", "127.0.0.1", "6379". They come after NewRedis's own, so
// they can also override them (a later argument wins), and every Start
// passes them again. Readiness is still PING: a replica may not have
// synchronized yet when NewRedisWith returns.
func NewRedisWith(args ...string) (*Redis, error) {
	return newRedis(nil, args)
}

// NewRedisTLS is NewRedisWith for a server that speaks only TLS, with f's
// server certificate: Port is its --tls-port and --port is 0, so plaintext
// connections are refused. Client certificates are verified against f's CA
// when presented (--tls-auth-clients optional; pass "--tls-auth-clients",
// "yes" to require them), and a replica replicates over TLS
// (--tls-replication yes). The readiness PING goes over TLS too.
func NewRedisTLS(f *TLSFiles, args ...string) (*Redis, error) {
	return newRedis(f, args)
}

func newRedis(f *TLSFiles, args []string) (*Redis, error) {
	bin, err := LookBinary("redis-server", "redis-server")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "testenv-redis-")
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	r := &Redis{Host: "127.0.0.1", Dir: dir, TLS: f, bin: bin, args: slices.Clone(args)}
	if err := onFreePorts(1, func(p []int) error { r.Port = p[0]; return r.start() }); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

// StartRedis is NewRedis for tests: it registers Close with tb.Cleanup and
// fails the test with tb.Fatal if the server cannot be started.
func StartRedis(tb testing.TB) *Redis {
	tb.Helper()
	r, err := NewRedis()
	if err != nil {
		tb.Fatalf("testenv: start Redis: %v", err)
	}
	tb.Cleanup(r.Close)
	return r
}

// StartRedisWith is NewRedisWith for tests, like StartRedis.
func StartRedisWith(tb testing.TB, args ...string) *Redis {
	tb.Helper()
	r, err := NewRedisWith(args...)
	if err != nil {
		tb.Fatalf("testenv: start Redis: %v", err)
	}
	tb.Cleanup(r.Close)
	return r
}

// StartRedisTLS is NewRedisTLS for tests, like StartRedis.
func StartRedisTLS(tb testing.TB, f *TLSFiles, args ...string) *Redis {
	tb.Helper()
	r, err := NewRedisTLS(f, args...)
	if err != nil {
		tb.Fatalf("testenv: start Redis: %v", err)
	}
	tb.Cleanup(r.Close)
	return r
}

// Addr returns the TCP address of the server, "127.0.0.1:PORT".
func (r *Redis) Addr() string {
	return r.Host + ":" + strconv.Itoa(r.Port)
}

// Stop shuts the server down gracefully (SIGTERM) and waits until it has
// exited. Its data is lost. Stopping a stopped server does nothing.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	err := r.proc.stop()
	r.proc = nil
	if err != nil {
		return fmt.Errorf("testenv: stop redis-server: %w%s", err, logTails(r.logPath()))
	}
	return nil
}

// PID is the server's process id (0 while stopped), for benchmarks that
// account its CPU time.
func (r *Redis) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc.pid()
}

// Kill kills the server with SIGKILL, like a crash, and waits until it has
// exited. Its data is lost. Killing a stopped server does nothing.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		r.proc.kill()
		r.proc = nil
	}
	return nil
}

// Start starts a stopped or killed server again on the same port, with an
// empty data set, and waits until it answers PING. It is an error to Start a
// running or closed server.
func (r *Redis) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startable(); err != nil {
		return err
	}
	return r.start()
}

// startable refuses to start a running or closed server; r.mu must be held.
func (r *Redis) startable() error {
	if r.closed {
		return errors.New("testenv: start redis-server: server is closed")
	}
	if r.proc != nil && !r.proc.exited() {
		return errors.New("testenv: start redis-server: server is already running")
	}
	return nil
}

// Close kills the server and removes its directory. Calling it again does
// nothing.
func (r *Redis) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	if r.proc != nil {
		r.proc.kill()
		r.proc = nil
	}
	os.RemoveAll(r.Dir)
}

func (r *Redis) logPath() string { return filepath.Join(r.Dir, "redis.log") }

// start starts redis-server and waits until it answers PING; r.mu must be
// held or r not yet shared. On failure the process is gone and the error
// holds the end of the log; it wraps errAddrInUse if the port was taken.
func (r *Redis) start() error {
	log := r.logPath()
	offset := fileSize(log)
	port := strconv.Itoa(r.Port)
	if r.TLS != nil {
		port = "0" // no plaintext listener; Port is the --tls-port
	}
	args := []string{
		"--bind", r.Host,
		"--port", port,
		"--dir", r.Dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--logfile", "", // stdout, which goes to redis.log
	}
	if r.TLS != nil {
		args = append(args,
			"--tls-port", strconv.Itoa(r.Port),
			"--tls-cert-file", r.TLS.ServerCert,
			"--tls-key-file", r.TLS.ServerKey,
			"--tls-ca-cert-file", r.TLS.CA,
			"--tls-auth-clients", "optional",
			"--tls-replication", "yes",
		)
	}
	args = append(args, r.args...)
	p, err := startProcess(r.bin, args, nil, log)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := p.waitReady(r.ping); err != nil {
		p.kill()
		if addrInUse(log, offset) {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("testenv: start redis-server on %s: %w%s", r.Addr(), err, logTails(log))
	}
	r.proc = p
	return nil
}

// ping sends PING and expects +PONG (over TLS to a NewRedisTLS server).
func (r *Redis) ping(ctx context.Context) error {
	d := &net.Dialer{Timeout: time.Second}
	var (
		c   net.Conn
		err error
	)
	if r.TLS != nil {
		tc, terr := r.TLS.ClientConfig()
		if terr != nil {
			return terr
		}
		c, err = (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, "tcp", r.Addr())
	} else {
		c, err = d.DialContext(ctx, "tcp", r.Addr())
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
