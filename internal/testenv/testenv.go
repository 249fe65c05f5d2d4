// Package testenv starts real MariaDB and Redis servers, and an in-process
// Kafka-protocol cluster, for integration tests.
//
// Every server is a private child process of the test binary: it listens on a
// free port on 127.0.0.1, keeps its files in a fresh temporary directory and
// is removed again by Close (StartMariaDB and StartRedis register Close with
// tb.Cleanup). Children run in their own process group and get SIGKILL when
// the test binary dies, so a crashed or interrupted test leaves nothing
// behind.
//
// The server binaries come from the Debian packages mariadb-server and
// redis-server (and redis-cli, which creates a Redis Cluster, from
// redis-tools). A missing binary is an error that names the package to
// install; tests are never skipped because a server is missing.
//
// Kafka is the exception: Debian has no Kafka, so NewKafka and StartKafka run
// kfake (github.com/twmb/franz-go/pkg/kfake) inside the test binary. Its
// brokers listen on free ports of 127.0.0.1 and serve sarama's idempotent
// producer, consumer groups, offset commits and admin requests; the topics
// are given with KafkaTopic, and KafkaDataDir keeps the data across Stop and
// Start. It dies with the test binary like the child processes. See
// kafka.go for what to know about sarama against it.
//
// BuildCachesync and Child run the cachesync daemon itself the same way: a
// child process of the test in its own process group, killed with the test
// binary, one numbered log file per run (see child.go).
package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// startTimeout bounds how long a server may take to start accepting
// connections.
const startTimeout = 60 * time.Second

// stopTimeout bounds a graceful shutdown; after it the process is killed.
const stopTimeout = 60 * time.Second

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// picks from just below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), where outgoing connections never take
// their local ports: a server stopped and restarted on its port (Stop, Start)
// would otherwise find it taken by some client's connection now and then.
// Another process may still bind the port before the caller does, so callers
// must be prepared to retry on a bind failure.
func FreePort() (int, error) {
	lo, hi := belowEphemeral()
	for range 100 {
		p := lo + rand.IntN(hi-lo)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			if err := l.Close(); err != nil {
				return 0, fmt.Errorf("testenv: find a free port: %w", err)
			}
			return p, nil
		}
	}
	return 0, fmt.Errorf("testenv: find a free port: 100 tries in %d-%d found none", lo, hi-1)
}

// errAddrInUse marks a start that failed because a port was taken.
var errAddrInUse = errors.New("address already in use")

// onFreePorts runs start with n distinct ports from FreePort. While start
// fails with errAddrInUse (another process bound a port between FreePort
// and start), it tries again with fresh ports, five times at most.
func onFreePorts(n int, start func(ports []int) error) error {
	for attempt := 1; ; attempt++ {
		ports := make([]int, 0, n)
		for len(ports) < n {
			p, err := FreePort()
			if err != nil {
				return err
			}
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
		err := start(ports)
		if err == nil || !errors.Is(err, errAddrInUse) || attempt == 5 {
			return err
		}
	}
}

// belowEphemeral is the range [lo, hi) of up to 10,000 ports just below the
// ephemeral range (Linux's default 32768-60999 gives 22768-32767).
func belowEphemeral() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var first, last int
		if n, _ := fmt.Sscan(string(b), &first, &last); n == 2 && first > 2048 {
			hi = first
		}
	}
	return max(1024, hi-10_000), hi
}

// LookBinary finds the executable name on PATH or in /usr/sbin or /usr/bin
// (Debian installs mariadbd in /usr/sbin, which is not on every user's PATH).
// If it is not found, the error says to install the Debian package pkg.
func LookBinary(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install the Debian package %s (sudo apt-get install %s) or run \"make test\", which installs it", name, pkg, pkg)
}

// WaitFor calls fn every interval until it returns nil or ctx is done. It
// returns nil once fn succeeds; otherwise it returns ctx's error joined with
// the last error of fn, so the caller can see why the wait failed.
func WaitFor(ctx context.Context, interval time.Duration, fn func(ctx context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// tailFile returns the last n lines of the file at path, or a note saying why
// it could not be read.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return fmt.Sprintf("(%s is empty)", path)
	}
	return strings.Join(lines, "\n")
}

// logTails formats the last lines of each log for an error message.
func logTails(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n--- last lines of %s ---\n%s", p, tailFile(p, 20))
	}
	return b.String()
}

// process is a running server: a child in its own process group that gets
// SIGKILL if the test binary dies.
//
// Pdeathsig is delivered when the OS thread that started the child exits. The
// Go runtime only ends threads of goroutines that exit while locked with
// runtime.LockOSThread, so do not start servers from such goroutines.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // result of Wait; valid after done is closed
}

// startProcess starts bin with args and the environment env (nil: the test
// binary's); its stdout and stderr are appended to the file outPath.
func startProcess(bin string, args, env []string, outPath string) (*process, error) {
	out, err := os.OpenFile(outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the child. os.Process.Signal uses a pidfd, so it
// cannot hit an unrelated process that reused the pid after the child exited.
func (p *process) signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
}

// kill sends SIGKILL and waits until the process has exited.
func (p *process) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits until the process has exited. If it is still
// running after stopTimeout it is killed and an error is returned. A non-zero
// exit status after SIGTERM is also an error.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM; killed it", filepath.Base(p.cmd.Path), stopTimeout)
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(p.cmd.Path), p.err)
	}
	return nil
}

// waitReady polls ready until it succeeds, the process exits or startTimeout
// passes. The returned error says which.
func (p *process) waitReady(ready func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := WaitFor(ctx, 50*time.Millisecond, ready)
	if err == nil {
		return nil
	}
	if p.exited() {
		return fmt.Errorf("%s exited before it was ready: %v", filepath.Base(p.cmd.Path), p.err)
	}
	return fmt.Errorf("%s not ready within %v: %w", filepath.Base(p.cmd.Path), startTimeout, err)
}

// addrInUse reports whether the log at path, from byte offset on, says that
// the server could not bind its port.
func addrInUse(path string, offset int64) bool {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return false
	}
	return strings.Contains(string(b[offset:]), "Address already in use")
}

// fileSize returns the size of the file at path, or 0 if it does not exist.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// pid is the process id, or 0 for a stopped process.
func (p *process) pid() int {
	if p == nil {
		return 0
	}
	return p.cmd.Process.Pid
}
