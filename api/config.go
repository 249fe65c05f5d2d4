package api

import (
	"fmt"
	"net"
)

// Config configures the HTTP server.
type Config struct {
	// Addr is the listen address of /metrics, /healthz and /readyz.
	Addr string `yaml:"addr"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Addr == "" {
		c.Addr = ":9090"
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("http.addr %q: want [host]:port", c.Addr)
	}
	return nil
}
