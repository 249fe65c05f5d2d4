package cache

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	hits, flushes                          *prometheus.CounterVec
	loads, refused, invalidated, l1Dropped prometheus.Counter
	l1Hits, l2Hits, dbReads                prometheus.Counter // resolved once: Get is hot
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "cachesync", "cache"
	m := &metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reads_total",
			Help: "Reads by where the value came from (L1, L2, DB)."}, []string{"source"}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "l1_flushes_total",
			Help: "Whole-L1 flushes, by reason."}, []string{"reason"}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "loads_total",
			Help: "Loader calls (database reads)."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fills_refused_total",
			Help: "Redis fills refused because an invalidation took the lease."}),
		invalidated: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "l1_invalidations_total",
			Help: "Keys named by invalidation messages."}),
		l1Dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "l1_puts_undone_total",
			Help: "L1 puts undone because an invalidation raced them."}),
	}
	m.l1Hits = m.hits.WithLabelValues(string(FromL1))
	m.l2Hits = m.hits.WithLabelValues(string(FromL2))
	m.dbReads = m.hits.WithLabelValues(string(FromDB))
	if reg != nil {
		reg.MustRegister(m.hits, m.flushes, m.loads, m.refused, m.invalidated, m.l1Dropped)
	}
	return m
}
