package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Prometheus is a private Prometheus server (Debian package prometheus)
// listening on Host:Port. It reads Dir/prometheus.yml, which the caller
// writes before starting it (rule files it names are resolved relative to
// Dir), and keeps its TSDB in Dir/data and its log in Dir/prometheus.log.
//
// The methods are safe for concurrent use.
type Prometheus struct {
	Host string
	Port int
	Dir  string

	mu   sync.Mutex
	proc *process // nil once closed
}

// NewPrometheus starts prometheus on a free port with the configuration in
// dir and waits (at most 60 s) until GET /-/ready answers 200. If the port
// turns out to be taken, it tries again on another one. The caller must
// Close the server; dir stays the caller's.
func NewPrometheus(dir string) (*Prometheus, error) {
	bin, err := LookBinary("prometheus", "prometheus")
	if err != nil {
		return nil, err
	}
	p := &Prometheus{Host: "127.0.0.1", Dir: dir}
	err = onFreePorts(1, func(ports []int) error {
		p.Port = ports[0]
		return p.start(bin)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// StartPrometheus is NewPrometheus for tests: it registers Close with
// tb.Cleanup and fails the test with tb.Fatal if the server cannot be
// started.
func StartPrometheus(tb testing.TB, dir string) *Prometheus {
	tb.Helper()
	p, err := NewPrometheus(dir)
	if err != nil {
		tb.Fatalf("testenv: start Prometheus: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// Addr returns the TCP address of the server, "127.0.0.1:PORT".
func (p *Prometheus) Addr() string {
	return p.Host + ":" + strconv.Itoa(p.Port)
}

// URL returns the server's base URL, "http://127.0.0.1:PORT".
func (p *Prometheus) URL() string {
	return "http://" + p.Addr()
}

// Log returns the path of the server's log.
func (p *Prometheus) Log() string {
	return filepath.Join(p.Dir, "prometheus.log")
}

// Close stops the server (SIGTERM, SIGKILL after a minute) and waits until
// it has exited. Closing twice does nothing.
func (p *Prometheus) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		_ = p.proc.stop()
		p.proc = nil
	}
}

func (p *Prometheus) start(bin string) error {
	log := p.Log()
	offset := fileSize(log)
	proc, err := startProcess(bin, []string{
		"--config.file=" + filepath.Join(p.Dir, "prometheus.yml"),
		"--storage.tsdb.path=" + filepath.Join(p.Dir, "data"),
		"--web.listen-address=" + p.Addr(),
	}, nil, log)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	ready := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/-/ready", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /-/ready: %s", resp.Status)
		}
		return nil
	}
	if err := proc.waitReady(ready); err != nil {
		proc.kill()
		if b, _ := os.ReadFile(log); int64(len(b)) >= offset && strings.Contains(string(b[offset:]), "address already in use") {
			return fmt.Errorf("testenv: prometheus on %s: %w", p.Addr(), errAddrInUse)
		}
		return fmt.Errorf("testenv: prometheus: %w%s", err, logTails(log))
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	return nil
}
