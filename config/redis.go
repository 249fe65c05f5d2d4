package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
)

// SetDefaults fills the unset fields: standalone mode, and in that mode the
// address 127.0.0.1:6379. Sentinel and cluster modes have no default
// address: the master's comes from the Sentinels, a cluster's seeds must
// be named.
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
		if err := r.refuse(RedisCluster, "addrs", r.Addrs != nil); err != nil {
			return err
		}
		if err := r.refuseSentinel(); err != nil {
			return err
		}
	case RedisSentinel:
		if r.Addr != "" {
			return fmt.Errorf("redis.addr %q: not used in sentinel mode (the Sentinels at redis.sentinel_addrs name the master)", r.Addr)
		}
		if err := r.refuse(RedisCluster, "addrs", r.Addrs != nil); err != nil {
			return err
		}
		if r.MasterName == "" {
			return fmt.Errorf("redis.master_name: required in sentinel mode")
		}
		if len(r.SentinelAddrs) == 0 {
			return fmt.Errorf("redis.sentinel_addrs: at least one host:port required in sentinel mode")
		}
		if err := checkAddrList("redis.sentinel_addrs", r.SentinelAddrs); err != nil {
			return err
		}
	case RedisCluster:
		if r.Addr != "" {
			return fmt.Errorf("redis.addr %q: not used in cluster mode (the seed nodes are redis.addrs)", r.Addr)
		}
		if err := r.refuseSentinel(); err != nil {
			return err
		}
		if len(r.Addrs) == 0 {
			return fmt.Errorf("redis.addrs: at least one host:port required in cluster mode (seed nodes of the cluster)")
		}
		if err := checkAddrList("redis.addrs", r.Addrs); err != nil {
			return err
		}
		if r.DB != 0 {
			return fmt.Errorf("redis.db %d: must be 0 in cluster mode (a Redis Cluster has only database 0)", r.DB)
		}
	default:
		return fmt.Errorf("redis.mode %q: want standalone, sentinel or cluster", r.Mode)
	}
	if r.DB < 0 || r.DB > 15 {
		return fmt.Errorf("redis.db %d: want 0..15", r.DB)
	}
	return r.TLS.Validate("redis.tls")
}

// refuseSentinel refuses the sentinel-only fields outside sentinel mode.
func (r *Redis) refuseSentinel() error {
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"master_name", r.MasterName != ""},
		{"sentinel_addrs", r.SentinelAddrs != nil},
		{"sentinel_username", r.SentinelUsername != ""},
		{"sentinel_password", r.SentinelPassword != ""},
	} {
		if err := r.refuse(RedisSentinel, f.name, f.set); err != nil {
			return err
		}
	}
	return nil
}

// refuse reports the field redis.name, set although only mode uses it.
func (r *Redis) refuse(mode, name string, set bool) error {
	if set {
		return fmt.Errorf("redis.%s: only used in %s mode (redis.mode is %s)", name, mode, r.Mode)
	}
	return nil
}

// checkAddrList checks each address of the list field and refuses
// duplicates.
func checkAddrList(field string, addrs []string) error {
	for i, a := range addrs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := checkHostPort(f, a); err != nil {
			return err
		}
		if slices.Index(addrs, a) < i {
			return fmt.Errorf("%s %q: listed twice", f, a)
		}
	}
	return nil
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
