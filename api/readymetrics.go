package api

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// readyCollector exports what /readyz answers, so that an alert can be
// written on it: cachesync_ready is 1 while every check passes and 0
// otherwise, cachesync_ready_check{check} the same for each check
// ("redis", "pipeline"). Both come from the checks' last background
// results (see Health), the ones /readyz answers from, so they do not
// depend on anything probing /readyz.
type readyCollector struct {
	h            *Health
	ready, check *prometheus.Desc
}

var _ prometheus.Collector = (*readyCollector)(nil)

// NewReadyCollector returns the collector of h's readiness.
func NewReadyCollector(h *Health) prometheus.Collector {
	return &readyCollector{h: h,
		ready: prometheus.NewDesc("cachesync_ready",
			"1 while /readyz answers 200 (every check passes), 0 while it answers 503.", nil, nil),
		check: prometheus.NewDesc("cachesync_ready_check",
			"1 while the named readiness check passes, 0 while it fails (the reason is in /readyz).", []string{"check"}, nil),
	}
}

// Describe sends both descriptors.
func (c *readyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ready
	ch <- c.check
}

// Collect reports the checks' last results.
func (c *readyCollector) Collect(ch chan<- prometheus.Metric) {
	names := c.h.checkNames()
	failed := c.h.Ready()
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, bit(len(failed) == 0))
	for _, n := range names {
		_, bad := failed[n]
		ch <- prometheus.MustNewConstMetric(c.check, prometheus.GaugeValue, bit(!bad), n)
	}
}

// checkNames returns the names of the registered checks, sorted.
func (h *Health) checkNames() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.checks))
	for n := range h.checks {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerReady adds h's readiness to the daemon's metrics.
func registerReady(h *Health, reg prometheus.Registerer) error {
	return reg.Register(NewReadyCollector(h))
}
