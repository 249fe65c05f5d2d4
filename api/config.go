package api

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/cachesync/cachesync/internal/tlsconf"
)

// Listener configures one HTTP listener: its address and the bounds that
// keep slow, idle or too many clients from holding the server. A zero
// field takes its default; no bound can be switched off.
type Listener struct {
	// Addr is [host]:port; port 0 takes a free port (logged at start).
	Addr string `yaml:"addr"`
	// ReadHeaderTimeout bounds reading a request's line and headers.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request, body included: a client
	// sending its body slowly is cut off after it.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer, so it must exceed the slowest handler (a reservation
	// waits up to seckill.produce_timeout for Kafka). A handler that needs
	// longer extends its own deadline with http.ResponseController, as
	// /debug/pprof/profile?seconds=N does.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection that sends no next request
	// for this long. Behind a load balancer that reuses connections, make
	// it longer than the balancer's own idle timeout.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds the request line and headers (431 beyond).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConns bounds the open connections. Beyond it new connections are
	// not accepted: they wait in the kernel's accept queue until one
	// closes (or the client gives up).
	MaxConns int `yaml:"max_conns"`
	// TLS makes the listener serve HTTPS (absent: plain HTTP), requiring
	// client certificates when it names a client CA.
	TLS tlsconf.Server `yaml:"tls"`
}

// Config configures the public listener (`http:`): the sale's and the
// goods endpoints, the ones clients call.
type Config struct {
	Listener `yaml:",inline"`
}

// AdminConfig configures the admin listener (`admin:`): /metrics, /livez,
// /readyz, /debug/pprof and /admin/*. It listens on loopback by default;
// expose it only to the operators' network.
type AdminConfig struct {
	Listener `yaml:",inline"`
	// ReadyzInterval is how often the readiness checks run in the
	// background; /readyz answers from their last results.
	ReadyzInterval time.Duration `yaml:"readyz_interval"`
	// ReadyzTimeout bounds each check: one that has not answered within it
	// fails ("timed out after …") until it does.
	ReadyzTimeout time.Duration `yaml:"readyz_timeout"`
}

// Defaults of the listeners.
const (
	DefaultAddr           = ":9090"
	DefaultAdminAddr      = "127.0.0.1:9091"
	DefaultMaxConns       = 4096
	DefaultAdminMaxConns  = 64
	DefaultMaxHeaderBytes = 32 << 10
)

// setDefaults fills the unset fields of a listener whose default address
// is addr and default connection limit maxConns.
func (l *Listener) setDefaults(addr string, maxConns int) {
	if l.Addr == "" {
		l.Addr = addr
	}
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = 5 * time.Second
	}
	if l.ReadTimeout == 0 {
		l.ReadTimeout = 10 * time.Second
	}
	if l.WriteTimeout == 0 {
		l.WriteTimeout = 30 * time.Second
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 30 * time.Second
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConns == 0 {
		l.MaxConns = maxConns
	}
}

// validate reports the first problem, naming the field under section.
func (l *Listener) validate(section string) error {
	if _, _, err := net.SplitHostPort(l.Addr); err != nil {
		return fmt.Errorf("%s.addr %q: want [host]:port", section, l.Addr)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read_header_timeout", l.ReadHeaderTimeout}, {"read_timeout", l.ReadTimeout},
		{"write_timeout", l.WriteTimeout}, {"idle_timeout", l.IdleTimeout},
	} {
		if d.v < time.Millisecond {
			return fmt.Errorf("%s.%s %s: want at least 1ms", section, d.name, d.v)
		}
	}
	if l.ReadHeaderTimeout > l.ReadTimeout {
		return fmt.Errorf("%s.read_header_timeout %s: must not exceed read_timeout %s (which bounds the headers too)", section, l.ReadHeaderTimeout, l.ReadTimeout)
	}
	if l.MaxHeaderBytes < 1<<10 || l.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("%s.max_header_bytes %d: want 1024..1048576", section, l.MaxHeaderBytes)
	}
	if l.MaxConns < 1 || l.MaxConns > 1_000_000 {
		return fmt.Errorf("%s.max_conns %d: want 1..1000000", section, l.MaxConns)
	}
	return l.TLS.Validate(section + ".tls")
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() { c.setDefaults(DefaultAddr, DefaultMaxConns) }

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error { return c.validate("http") }

// SetDefaults fills unset fields.
func (c *AdminConfig) SetDefaults() {
	c.setDefaults(DefaultAdminAddr, DefaultAdminMaxConns)
	if c.ReadyzInterval == 0 {
		c.ReadyzInterval = time.Second
	}
	if c.ReadyzTimeout == 0 {
		c.ReadyzTimeout = 2 * time.Second
	}
}

// Validate reports the first problem with the configuration.
func (c *AdminConfig) Validate() error {
	if err := c.validate("admin"); err != nil {
		return err
	}
	if c.ReadyzInterval < 10*time.Millisecond {
		return fmt.Errorf("admin.readyz_interval %s: want at least 10ms", c.ReadyzInterval)
	}
	if c.ReadyzTimeout < 10*time.Millisecond {
		return fmt.Errorf("admin.readyz_timeout %s: want at least 10ms", c.ReadyzTimeout)
	}
	return nil
}

// CheckAddrs refuses an admin listener on the public listener's port (a
// fixed port, on the same or an overlapping host): one of them could not
// bind, or the admin endpoints would share the public address.
func CheckAddrs(public Config, admin AdminConfig) error {
	ph, pp, err1 := net.SplitHostPort(public.Addr)
	ah, ap, err2 := net.SplitHostPort(admin.Addr)
	if err1 != nil || err2 != nil || pp != ap {
		return nil
	}
	if n, err := strconv.Atoi(pp); err == nil && n == 0 {
		return nil // each takes its own free port
	}
	wildcard := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	if ph == ah || wildcard(ph) || wildcard(ah) {
		return fmt.Errorf("admin.addr %q: must not share a port with http.addr %q", admin.Addr, public.Addr)
	}
	return nil
}
