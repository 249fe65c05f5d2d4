package seckill_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cachesync/cachesync/internal/testenv"
)

// buildCachesync compiles the daemon into a directory of the test (the Go
// build cache makes every build after the first cheap).
// CACHESYNC_CRASH_RACE=1 builds it with the race detector.
func buildCachesync(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the daemon: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "cachesync")
	args := []string{"build", "-o", bin}
	if os.Getenv("CACHESYNC_CRASH_RACE") != "" {
		args = append(args, "-race")
	}
	args = append(args, "github.com/cachesync/cachesync/cmd/cachesync")
	if out, err := exec.Command(goBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// saleChild is a cachesync daemon running as a child process of the test
// (`cachesync run -config FILE`) on the stack's servers; each start is a
// numbered run logging to its own file. Logs are kept when the test fails.
type saleChild struct {
	t    *testing.T
	bin  string
	cfg  string
	dir  string
	base string // its HTTP server, http://127.0.0.1:PORT
	runs int
	cur  *childRun
}

type childRun struct {
	n    int
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // Wait's result, valid after done
}

// newSaleChild writes the configuration of a child daemon: the stack's
// configuration (its own mysql.server_id and HTTP port) with seckillExtra
// under seckill. Nothing runs until start.
func (s *stack) newSaleChild(bin, seckillExtra string) *saleChild {
	s.t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		s.t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cachesync-sale-child-")
	if err != nil {
		s.t.Fatal(err)
	}
	c := &saleChild{t: s.t, bin: bin, cfg: filepath.Join(dir, "cachesync.yaml"), dir: dir, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	yaml := strings.Replace(s.configYAML(port, seckillExtra), "level: warn", "level: info", 1)
	if err := os.WriteFile(c.cfg, []byte(yaml), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		c.killCurrent()
		if s.t.Failed() {
			s.t.Logf("child daemon config and logs kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return c
}

func (c *saleChild) start() *childRun {
	c.t.Helper()
	c.runs++
	r := &childRun{n: c.runs, log: filepath.Join(c.dir, fmt.Sprintf("run-%03d.log", c.runs)), done: make(chan struct{})}
	out, err := os.Create(r.log)
	if err != nil {
		c.t.Fatal(err)
	}
	r.cmd = exec.Command(c.bin, "run", "-config", c.cfg)
	r.cmd.Stdout, r.cmd.Stderr = out, out
	r.cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CACHESYNC_") })
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		out.Close()
		c.t.Fatalf("start child daemon: %v", err)
	}
	go func() {
		r.err = r.cmd.Wait()
		out.Close()
		close(r.done)
	}()
	c.cur = r
	return r
}

func (c *saleChild) killCurrent() {
	if r := c.cur; r != nil && !r.exited() {
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

func (r *childRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// kill is kill -9; the run must still be running.
func (r *childRun) kill(t *testing.T) {
	t.Helper()
	if r.exited() {
		t.Fatalf("child run %d had already exited: %v%s", r.n, r.err, r.tail())
	}
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill child run %d: %v", r.n, err)
	}
	<-r.done
}

// term sends SIGTERM and requires exit status 0 within 30 s.
func (r *childRun) term(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM child run %d: %v", r.n, err)
	}
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("child run %d still running 30s after SIGTERM%s", r.n, r.tail())
	}
	if r.err != nil {
		t.Fatalf("child run %d after SIGTERM: %v, want exit status 0%s", r.n, r.err, r.tail())
	}
}

// waitStarted waits until the run has started (its seckill roles logged
// "seckill started" and its HTTP server answers), then a moment longer:
// the daemon handles SIGTERM only once its start-up has returned.
func (c *saleChild) waitStarted(t *testing.T, r *childRun) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(r.log)
		if strings.Contains(string(b), `"seckill started"`) {
			if _, err := scrapeMetrics(c.base); err == nil {
				break
			}
		}
		if r.exited() || time.Now().After(deadline) {
			t.Fatalf("child run %d did not start (exited: %v)%s", r.n, r.exited(), r.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
}

// tail returns the end of the run's log for failure messages.
func (r *childRun) tail() string {
	b, _ := os.ReadFile(r.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", r.log, strings.Join(lines[max(0, len(lines)-30):], "\n"))
}

// checkLogs fails the test on a panic, a data race or an error-level line
// in any run's log and returns how often each warning occurred.
func (c *saleChild) checkLogs(t *testing.T) map[string]int {
	t.Helper()
	warns := map[string]int{}
	for n := 1; n <= c.runs; n++ {
		path := filepath.Join(c.dir, fmt.Sprintf("run-%03d.log", n))
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, "DATA RACE"), strings.HasPrefix(line, "panic:"), strings.HasPrefix(line, "fatal error:"):
				t.Errorf("%s: %s", path, line)
			case strings.Contains(line, `"level":"error"`), strings.Contains(line, `"level":"fatal"`):
				t.Errorf("%s: %s", path, line)
			case strings.Contains(line, `"level":"warn"`):
				_, msg, _ := strings.Cut(line, `"message":`)
				warns[msg]++
			}
		}
		f.Close()
	}
	return warns
}

// scrapeMetrics reads every sample of a /metrics page.
func scrapeMetrics(base string) (map[string]float64, error) {
	r, err := call("GET", base+"/metrics", "")
	if err != nil {
		return nil, err
	}
	if r.Status != 200 {
		return nil, fmt.Errorf("GET /metrics: %d", r.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(r.Raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// saramaTestConfig is a client configuration for the in-process broker.
func saramaTestConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "seckill-test"
	c.Version = sarama.V3_6_0_0
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewHashPartitioner // as the daemon's producer
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	return c
}

// produceRaw writes value to the order topic with key (the item id, as the
// daemon keys its orders, so both land in the same partition) and returns
// the partition and offset.
func (s *stack) produceRaw(key, value string) (int32, int64) {
	s.t.Helper()
	p, err := sarama.NewSyncProducer(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer p.Close()
	part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: "cachesync.orders", Key: sarama.StringEncoder(key), Value: sarama.StringEncoder(value)})
	if err != nil {
		s.t.Fatalf("produce %q: %v", value, err)
	}
	return part, off
}

// committedOffset is the order group's committed offset of a partition of
// the order topic (-1 when none).
func (s *stack) committedOffset(partition int32) int64 {
	s.t.Helper()
	admin, err := sarama.NewClusterAdmin(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets("cachesync-orders", map[string][]int32{"cachesync.orders": {partition}})
	if err != nil {
		s.t.Fatal(err)
	}
	if b := resp.GetBlock("cachesync.orders", partition); b != nil && b.Err == sarama.ErrNoError {
		return b.Offset
	}
	return -1
}

// readTopic reads every message of partition 0 of topic, waiting up to
// timeout until at least want arrived.
func (s *stack) readTopic(topic string, want int, timeout time.Duration) []*sarama.ConsumerMessage {
	s.t.Helper()
	cons, err := sarama.NewConsumer(s.kafka.ListenAddrs(), saramaTestConfig())
	if err != nil {
		s.t.Fatal(err)
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		s.t.Fatal(err)
	}
	defer pc.Close()
	var got []*sarama.ConsumerMessage
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for len(got) < want {
		select {
		case m := <-pc.Messages():
			got = append(got, m)
		case err := <-pc.Errors():
			s.t.Fatalf("read %s: %v", topic, err)
		case <-ctx.Done():
			s.t.Fatalf("read %s: %d messages after %s, want %d", topic, len(got), timeout, want)
		}
	}
	// Anything beyond want that is already there.
	for {
		select {
		case m := <-pc.Messages():
			got = append(got, m)
		case <-time.After(300 * time.Millisecond):
			return got
		}
	}
}

var errNoHeader = errors.New("no such header")

// header returns the value of a record header.
func header(m *sarama.ConsumerMessage, key string) (string, error) {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value), nil
		}
	}
	return "", errNoHeader
}
