package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
)

// SetDefaults fills the unset fields: standalone mode, and in that mode the
// address 127.0.0.1:6379. Sentinel mode has no default address: the master's
// comes from the Sentinels.
func (r *Redis) SetDefaults() {
	if r.Mode == "" {
		r.Mode = RedisStandalone
	}
	if r.Mode == RedisStandalone && r.Addr == "" {
		r.Addr = "127.0.0.1:6379"
	}
}

// Validate reports the first problem, naming the field. A field the mode
// does not use is an error rather than silently ignored, like a rule field
// its kind does not use.
func (r *Redis) Validate() error {
	switch r.Mode {
	case RedisStandalone:
		if err := checkHostPort("redis.addr", r.Addr); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"master_name", r.MasterName != ""},
			{"sentinel_addrs", r.SentinelAddrs != nil},
			{"sentinel_username", r.SentinelUsername != ""},
			{"sentinel_password", r.SentinelPassword != ""},
		} {
			if f.set {
				return fmt.Errorf("redis.%s: only used in sentinel mode (redis.mode is standalone)", f.name)
			}
		}
	case RedisSentinel:
		if r.Addr != "" {
			return fmt.Errorf("redis.addr %q: not used in sentinel mode (the Sentinels at redis.sentinel_addrs name the master)", r.Addr)
		}
		if r.MasterName == "" {
			return fmt.Errorf("redis.master_name: required in sentinel mode")
		}
		if len(r.SentinelAddrs) == 0 {
			return fmt.Errorf("redis.sentinel_addrs: at least one host:port required in sentinel mode")
		}
		for i, a := range r.SentinelAddrs {
			field := fmt.Sprintf("redis.sentinel_addrs[%d]", i)
			if err := checkHostPort(field, a); err != nil {
				return err
			}
			if slices.Index(r.SentinelAddrs, a) < i {
				return fmt.Errorf("%s %q: listed twice", field, a)
			}
		}
	case "cluster":
		return fmt.Errorf("redis.mode %q: not supported yet (want standalone or sentinel)", r.Mode)
	default:
		return fmt.Errorf("redis.mode %q: want standalone or sentinel", r.Mode)
	}
	if r.DB < 0 || r.DB > 15 {
		return fmt.Errorf("redis.db %d: want 0..15", r.DB)
	}
	return r.TLS.Validate("redis.tls")
}

// checkHostPort checks that addr is host:port with a port in 1..65535.
func checkHostPort(field, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port", field, addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("%s %q: bad port", field, addr)
	}
	return nil
}
