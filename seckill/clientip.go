package seckill

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// proxies are the trusted reverse proxies (seckill.trusted_proxies).
type proxies []netip.Prefix

// parseProxies reads CIDRs and single addresses.
func parseProxies(list []string) (proxies, error) {
	var ps proxies
	for i, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			ps = append(ps, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("seckill.trusted_proxies[%d] %q: want an address or a CIDR like 10.0.0.0/8", i, s)
		}
		a = a.Unmap()
		ps = append(ps, netip.PrefixFrom(a, a.BitLen()))
	}
	return ps, nil
}

func (ps proxies) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the address the per-IP limits key on. It is the peer's
// address, unless the peer is a trusted proxy: then X-Forwarded-For is
// read from the right (the entry the nearest proxy appended) past every
// trusted proxy, and the first other address is the client. Entries left
// of it were written by the client and are never believed. An entry that
// is no address stops the walk at the last trusted hop.
func (ps proxies) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || len(ps) == 0 || !ps.trusted(peer) {
		return host
	}
	hop := peer.Unmap()
	var chain []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		chain = append(chain, strings.Split(h, ",")...)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(chain[i]))
		if err != nil {
			break
		}
		hop = a.Unmap()
		if !ps.trusted(hop) {
			break
		}
	}
	return hop.String()
}
