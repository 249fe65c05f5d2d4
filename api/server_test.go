package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// holdLimit bounds how long a test waits for the server to close a
// connection or answer: past it the connection counts as held. It detects
// a hang; it measures nothing.
const holdLimit = 20 * time.Second

func testPublic(mod func(*Config)) Config {
	c := Config{Listener: Listener{Addr: "127.0.0.1:0"}}
	c.SetDefaults()
	if mod != nil {
		mod(&c)
	}
	if err := c.Validate(); err != nil {
		panic(err)
	}
	return c
}

func testAdmin(mod func(*AdminConfig)) AdminConfig {
	c := AdminConfig{Listener: Listener{Addr: "127.0.0.1:0"}}
	c.SetDefaults()
	if mod != nil {
		mod(&c)
	}
	if err := c.Validate(); err != nil {
		panic(err)
	}
	return c
}

// testServer is a started Server, its health and its metrics registry.
type testServer struct {
	*Server
	reg *prometheus.Registry
}

// startServer starts both listeners with health (a fresh one when nil)
// until the test ends. The public mux has POST /echo, which reads the
// whole body and writes it back, as every POST handler reads its body.
func startServer(t *testing.T, pub Config, adm AdminConfig, h *Health) testServer {
	t.Helper()
	if h == nil {
		h = NewHealth(adm.ReadyzInterval, adm.ReadyzTimeout)
	}
	reg := prometheus.NewRegistry()
	s, err := NewServer(pub, adm, h, reg, reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s.Public.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(b)
	})
	s.Public.HandleFunc("GET /ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		if err := h.Stop(ctx); err != nil {
			t.Errorf("health stop: %v", err)
		}
	})
	return testServer{Server: s, reg: reg}
}

// dial opens n connections to addr, closed at the end of the test.
func dial(t *testing.T, addr net.Addr, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}

// closedByServer reads c until the server closes it; an error if it is
// still open after holdLimit. It returns what was read.
func closedByServer(c net.Conn) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(holdLimit))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return string(b), fmt.Errorf("connection still open after %s", holdLimit)
	}
	return string(b), nil // EOF or reset: closed
}

// allClosed runs closedByServer on every connection at once, checking
// what each read with want.
func allClosed(t *testing.T, conns []net.Conn, want func(read string) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	for i, c := range conns {
		wg.Go(func() {
			read, err := closedByServer(c)
			if err == nil && want != nil {
				err = want(read)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	held := 0
	for i, err := range errs {
		if err != nil {
			held++
			if held <= 3 {
				t.Errorf("connection %d: %v", i, err)
			}
		}
	}
	if held > 0 {
		t.Errorf("%d of %d connections not closed as wanted", held, len(conns))
	}
}

// TestSlowBodiesCutOff: 100 connections that send headers and then hold
// their body back are closed once read_timeout has passed (with an
// error answer), on both listeners. Before, only the headers had a
// timeout: such connections were held as long as the client wished.
func TestSlowBodiesCutOff(t *testing.T) {
	pub := testPublic(func(c *Config) { c.ReadHeaderTimeout, c.ReadTimeout = 200*time.Millisecond, 300*time.Millisecond })
	adm := testAdmin(func(c *AdminConfig) { c.ReadHeaderTimeout, c.ReadTimeout = 200*time.Millisecond, 300*time.Millisecond })
	s := startServer(t, pub, adm, nil)
	s.Admin.HandleFunc("POST /admin/echo", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	for _, tc := range []struct {
		addr net.Addr
		path string
		n    int
	}{{s.PublicAddr(), "/echo", 100}, {s.AdminAddr(), "/admin/echo", 50}} {
		conns := dial(t, tc.addr, tc.n)
		for _, c := range conns {
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", tc.path); err != nil {
				t.Fatal(err)
			}
		}
		allClosed(t, conns, func(read string) error {
			if strings.HasPrefix(read, "HTTP/1.1 200") {
				return fmt.Errorf("answered 200 to a body never sent: %q", read)
			}
			return nil
		})
	}
}

// TestIdleKeepAliveClosed: 100 keep-alive connections that got their
// answer and send nothing more are closed after idle_timeout. Before,
// without an idle or read timeout, they were held for good.
func TestIdleKeepAliveClosed(t *testing.T) {
	pub := testPublic(func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	adm := testAdmin(func(c *AdminConfig) { c.IdleTimeout = 300 * time.Millisecond })
	s := startServer(t, pub, adm, nil)
	for _, tc := range []struct {
		addr net.Addr
		path string
		n    int
	}{{s.PublicAddr(), "/ok", 100}, {s.AdminAddr(), "/livez", 50}} {
		conns := dial(t, tc.addr, tc.n)
		for i, c := range conns {
			if err := roundTrip(c, tc.path); err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
		}
		allClosed(t, conns, func(read string) error {
			if read != "" {
				return fmt.Errorf("unexpected bytes on an idle connection: %q", read)
			}
			return nil
		})
	}
}

// roundTrip sends GET path on c and reads a 200 answer that keeps the
// connection open.
func roundTrip(c net.Conn, path string) error {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(holdLimit))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.Close {
		return fmt.Errorf("GET %s: %d, close %v", path, resp.StatusCode, resp.Close)
	}
	return nil
}

// TestConnLimit: with max_conns connections open, one more is not
// accepted: it waits in the kernel's accept queue, unanswered, and is
// served as soon as one of the others closes.
func TestConnLimit(t *testing.T) {
	const limit = 3
	pub := testPublic(func(c *Config) { c.MaxConns = limit })
	s := startServer(t, pub, testAdmin(nil), nil)
	open := func() float64 { return testutil.ToFloat64(s.open.WithLabelValues("public")) }
	held := dial(t, s.PublicAddr(), limit)
	for i, c := range held {
		if err := roundTrip(c, "/ok"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	extra := dial(t, s.PublicAddr(), 1)[0]
	if _, err := fmt.Fprint(extra, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The extra connection is in the listening socket's accept queue: the
	// kernel completed its handshake, the server did not accept it.
	port := s.PublicAddr().(*net.TCPAddr).Port
	if q, err := acceptQueue(port); err != nil {
		t.Logf("accept queue not observed: %v", err)
	} else if q != 1 {
		t.Errorf("accept queue of :%d holds %d connections, want 1 (the one over the limit)", port, q)
	}
	if n := open(); n != limit {
		t.Errorf("open connections %v, want %d", n, limit)
	}
	held[0].Close()
	if err := roundTrip(extra, "/ok"); err != nil {
		t.Fatalf("the connection over the limit, after one closed: %v", err)
	}
	// The closed connection's slot is freed just before its state hook
	// runs: the gauge may read limit+1 for a moment.
	for deadline := time.Now().Add(holdLimit); open() != limit; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("open connections %v, want %d", open(), limit)
		}
	}
}

// acceptQueue reads the accept-queue length of the socket listening on
// 127.0.0.1:port from /proc/net/tcp (Linux: rx_queue of a LISTEN socket).
func acceptQueue(port int) (int, error) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != local || f[3] != "0A" {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, err := strconv.ParseInt(rx, 16, 32)
		return int(n), err
	}
	return 0, fmt.Errorf("no listening socket %s in /proc/net/tcp", local)
}

// TestListenersSplit: operators' endpoints answer on the admin listener
// only, clients' endpoints on the public one only.
func TestListenersSplit(t *testing.T) {
	s := startServer(t, testPublic(nil), testAdmin(nil), nil)
	s.Admin.HandleFunc("POST /admin/thing", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("done")) })
	get := func(addr net.Addr, method, path string) int {
		req, _ := http.NewRequest(method, "http://"+addr.String()+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path string
		admin        bool
	}{
		{"GET", "/metrics", true}, {"GET", "/livez", true}, {"GET", "/healthz", true}, {"GET", "/readyz", true},
		{"GET", "/debug/pprof/", true}, {"GET", "/debug/pprof/heap", true}, {"GET", "/debug/pprof/cmdline", true},
		{"POST", "/admin/thing", true}, {"GET", "/ok", false},
	} {
		on, off := s.AdminAddr(), s.PublicAddr()
		if !tc.admin {
			on, off = off, on
		}
		if code := get(on, tc.method, tc.path); code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Errorf("%s %s on its listener: %d", tc.method, tc.path, code)
		}
		if code := get(off, tc.method, tc.path); code != http.StatusNotFound {
			t.Errorf("%s %s on the other listener: %d, want 404", tc.method, tc.path, code)
		}
	}
}

// TestPprofProfileOutlivesWriteTimeout: a CPU profile of 2 s on an admin
// listener whose write timeout is 1 s comes back whole (pprof extends its
// own write deadline by ?seconds).
func TestPprofProfileOutlivesWriteTimeout(t *testing.T) {
	adm := testAdmin(func(c *AdminConfig) { c.WriteTimeout = time.Second })
	s := startServer(t, testPublic(nil), adm, nil)
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/debug/pprof/profile?seconds=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Fatalf("profile: %d, %d bytes, %v; want 200 and a gzipped profile", resp.StatusCode, len(b), err)
	}
}

// TestStartBindError: an admin address taken fails Start, and frees the
// public one it had bound.
func TestStartBindError(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	pubLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pubAddr := pubLn.Addr().String()
	pubLn.Close()
	pub := testPublic(func(c *Config) { c.Addr = pubAddr })
	adm := testAdmin(func(c *AdminConfig) { c.Addr = taken.Addr().String() })
	reg := prometheus.NewRegistry()
	s, err := NewServer(pub, adm, NewHealth(time.Second, time.Second), reg, reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "admin listen "+taken.Addr().String()) {
		t.Fatalf("Start with the admin address taken: %v", err)
	}
	ln, err := net.Listen("tcp", pubAddr)
	if err != nil {
		t.Fatalf("the public address is still bound after the failed start: %v", err)
	}
	ln.Close()
}
