package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cachesyncPkg is the daemon's package. Building it by import path works from
// the test directory of any package of the module.
const cachesyncPkg = "github.com/cachesync/cachesync/cmd/cachesync"

// build is the one cachesync binary of this test binary.
var build struct {
	once sync.Once
	dir  string // removed by RemoveBuilds
	bin  string
	err  error
}

// BuildCachesync compiles the cachesync daemon (cmd/cachesync) once per test
// binary and returns the path of the binary; later calls return the same
// path (the Go build cache makes the first build cheap after the first run).
// CACHESYNC_CRASH_RACE=1 builds it with the race detector. A failed build
// fails the test with tb.Fatal. The binary lives in a temporary directory
// that RemoveBuilds deletes: call it from TestMain after m.Run.
func BuildCachesync(tb testing.TB) string {
	tb.Helper()
	build.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			build.err = fmt.Errorf("the go command is needed to build the daemon: %w", err)
			return
		}
		if build.dir, build.err = os.MkdirTemp("", "cachesync-bin-"); build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "cachesync")
		args := []string{"build", "-o", build.bin}
		if os.Getenv("CACHESYNC_CRASH_RACE") != "" {
			args = append(args, "-race")
		}
		args = append(args, cachesyncPkg)
		if out, err := exec.Command(goBin, args...).CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	})
	if build.err != nil {
		tb.Fatalf("testenv: build cachesync: %v", build.err)
	}
	return build.bin
}

// RemoveBuilds deletes what BuildCachesync built. Call it from TestMain after
// m.Run, when no test uses the binary any more.
func RemoveBuilds() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// ChildEnv returns the environment of the test binary without the CACHESYNC_*
// variables, so that a cachesync child takes its configuration from its file
// alone (the Makefile, for one, exports CACHESYNC_DEV_* variables).
func ChildEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CACHESYNC_") })
}

// Child starts numbered runs of `Bin run -config Config` as child processes
// of the test, one at a time: run n logs its stdout and stderr to
// Dir/run-NNN.log (Dir should be a fresh directory: a log is appended to).
// Like the servers, each run is in its own process group and gets SIGKILL
// when the test binary dies; its environment is ChildEnv. The caller owns
// Dir and should register KillCurrent with tb.Cleanup, so that a failed test
// does not leave its last run behind.
//
// The methods are safe for concurrent use.
type Child struct {
	Bin    string // the binary, from BuildCachesync
	Config string // the configuration file
	Dir    string // where the logs go

	mu   sync.Mutex
	runs int
	cur  *ChildRun
}

// ChildRun is one run of a Child.
type ChildRun struct {
	N   int    // 1 for the first run of its Child
	Log string // its stdout and stderr

	p *process
}

// logPath is the log file of run n.
func (c *Child) logPath(n int) string {
	return filepath.Join(c.Dir, fmt.Sprintf("run-%03d.log", n))
}

// Start starts the next run; it fails the test if the process cannot be
// started. The run becomes the current one.
func (c *Child) Start(tb testing.TB) *ChildRun {
	tb.Helper()
	return c.StartEnv(tb)
}

// StartEnv is Start with more environment variables ("KEY=value") for
// this run only, after ChildEnv: a test hook of the daemon, say.
func (c *Child) StartEnv(tb testing.TB, env ...string) *ChildRun {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs++
	r := &ChildRun{N: c.runs, Log: c.logPath(c.runs)}
	p, err := startProcess(c.Bin, []string{"run", "-config", c.Config}, append(ChildEnv(), env...), r.Log)
	if err != nil {
		tb.Fatalf("testenv: run %d: %v", r.N, err)
	}
	r.p = p
	c.cur = r
	return r
}

// Runs is how many runs Start started.
func (c *Child) Runs() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs
}

// KillCurrent kills the current run with SIGKILL, if it is still running, and
// waits until it has exited.
func (c *Child) KillCurrent() {
	c.mu.Lock()
	r := c.cur
	c.mu.Unlock()
	if r != nil {
		r.p.kill()
	}
}

// CheckLogs reads the log of every run. It fails the test (tb.Errorf) on a
// data race (a binary built with CACHESYNC_CRASH_RACE=1), a panic, a fatal
// runtime error or an error- or fatal-level log line, logs how often each
// warning occurred and returns those counts by message. The logs are
// zerolog's JSON lines ({"level":…,"message":…}).
func (c *Child) CheckLogs(tb testing.TB) map[string]int {
	tb.Helper()
	warns := map[string]int{}
	runs := c.Runs()
	for n := 1; n <= runs; n++ {
		path := c.logPath(n)
		f, err := os.Open(path)
		if err != nil {
			tb.Error(err)
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			var m struct{ Level, Message string }
			_ = json.Unmarshal([]byte(line), &m)
			switch {
			case strings.Contains(line, "DATA RACE"), strings.HasPrefix(line, "panic:"), strings.HasPrefix(line, "fatal error:"):
				tb.Errorf("%s: %s", path, line)
			case m.Level == "error" || m.Level == "fatal":
				tb.Errorf("%s: %s", path, line)
			case m.Level == "warn":
				warns[m.Message]++
			}
		}
		if err := sc.Err(); err != nil {
			tb.Errorf("read %s: %v", path, err)
		}
		f.Close()
	}
	if len(warns) > 0 {
		var b strings.Builder
		for _, msg := range slices.Sorted(maps.Keys(warns)) {
			fmt.Fprintf(&b, "\n  %dx %s", warns[msg], msg)
		}
		tb.Logf("warnings in the logs of %d runs:%s", runs, b.String())
	}
	return warns
}

// Exited reports whether the run's process has exited.
func (r *ChildRun) Exited() bool { return r.p.exited() }

// Done is closed when the run's process has exited.
func (r *ChildRun) Done() <-chan struct{} { return r.p.done }

// Err is the result of Wait (nil for exit status 0) once Done is closed, and
// nil while the process runs.
func (r *ChildRun) Err() error {
	if !r.Exited() {
		return nil
	}
	return r.p.err
}

// Signal sends sig to the run's process. os.Process.Signal uses a pidfd, so
// it cannot hit an unrelated process that reused the pid.
func (r *ChildRun) Signal(sig os.Signal) error {
	return r.p.cmd.Process.Signal(sig)
}

// Kill is kill -9: it sends SIGKILL and waits until the process has exited.
// The run must still be running; it fails the test if it had exited.
func (r *ChildRun) Kill(tb testing.TB) {
	tb.Helper()
	if r.Exited() {
		tb.Fatalf("run %d had already exited: %v%s", r.N, r.p.err, r.Tail())
	}
	r.p.kill()
}

// Term sends SIGTERM and requires the process to exit with status 0 within
// the given time and to have logged the daemon's "stopped" line. It logs how
// long the shutdown took.
func (r *ChildRun) Term(tb testing.TB, within time.Duration) {
	tb.Helper()
	start := time.Now()
	if err := r.Signal(syscall.SIGTERM); err != nil {
		tb.Fatalf("SIGTERM run %d: %v", r.N, err)
	}
	select {
	case <-r.p.done:
	case <-time.After(within):
		tb.Fatalf("run %d still running %s after SIGTERM%s", r.N, within, r.Tail())
	}
	if r.p.err != nil {
		tb.Fatalf("run %d after SIGTERM: %v, want exit status 0%s", r.N, r.p.err, r.Tail())
	}
	if !r.LogHas(`"stopped"`) {
		tb.Errorf("run %d: no \"stopped\" log line%s", r.N, r.Tail())
	}
	tb.Logf("run %d: SIGTERM -> exit 0 in %s", r.N, time.Since(start).Round(time.Millisecond))
}

// LogHas reports whether the run's log contains s.
func (r *ChildRun) LogHas(s string) bool {
	b, _ := os.ReadFile(r.Log)
	return strings.Contains(string(b), s)
}

// Grep returns the first line of the run's log that contains s, or "".
func (r *ChildRun) Grep(s string) string {
	f, err := os.Open(r.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return sc.Text()
		}
	}
	return ""
}

// Tail returns the last 30 lines of the run's log under a header line, for
// failure messages.
func (r *ChildRun) Tail() string {
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", r.Log, tailFile(r.Log, 30))
}
