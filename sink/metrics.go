package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows                              *prometheus.CounterVec
	errors                            *prometheus.CounterVec
	txns, batches, retries, published prometheus.Counter
	nullKeys                          prometheus.Counter
	latency, scriptSeconds            prometheus.Histogram
	lag, seq, cpFile, cpOffset        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "cachesync", "sink"
	m := &metrics{
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rows_total",
			Help: "Row changes applied, by table and rule."}, []string{"table", "rule"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "Failed or refused apply calls, by kind (connection, wrongtype, oom, other; refused: reset, rewind, fenced, conflict)."}, []string{"kind"}),
		txns: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "transactions_total",
			Help: "Transactions applied."}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "batches_total",
			Help: "Script calls that applied a batch of transactions."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Apply calls retried after an error."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "invalidation_messages_total",
			Help: "Invalidation messages published."}),
		nullKeys: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "null_key_skips_total",
			Help: "Keys not written because a key column was NULL."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "apply_latency_seconds",
			Help:    "Commit timestamp to applied in Redis (commit timestamps have 1 s resolution except on MySQL 8).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
		scriptSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "script_seconds",
			Help: "Duration of one apply script call.", Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12)}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "replication_lag_seconds",
			Help: "Now minus the commit time of the last applied transaction; 0 when nothing is queued."}),
		seq: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "invalidation_seq",
			Help: "Sequence number of the last invalidation message."}),
		cpFile: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "checkpoint_file_number",
			Help: "Binlog file number of the checkpoint."}),
		cpOffset: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "checkpoint_offset",
			Help: "Binlog offset of the checkpoint."}),
	}
	if reg != nil {
		reg.MustRegister(m.rows, m.errors, m.txns, m.batches, m.retries, m.published, m.nullKeys,
			m.latency, m.scriptSeconds, m.lag, m.seq, m.cpFile, m.cpOffset)
	}
	return m
}
