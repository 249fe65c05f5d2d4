package seckill

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reservations  *prometheus.CounterVec
	consumed      *prometheus.CounterVec
	retries       prometheus.Counter
	deadLettered  prometheus.Counter
	storeSeconds  prometheus.Histogram
	canceled      prometheus.Counter
	reaped        prometheus.Counter
	rebuilds      prometheus.Counter
	rebuildErrors prometheus.Counter
	limited       *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	drift         *prometheus.GaugeVec
	checks        prometheus.Counter
	jobRuns       *prometheus.CounterVec
	consumerLag   *prometheus.GaugeVec
	unknownItems  *prometheus.CounterVec
	itemLookups   *prometheus.CounterVec
	outbox        *prometheus.CounterVec
	outboxWaiting prometheus.Gauge
	pipelined     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reservations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_reservations_total",
			Help: "Reservation attempts by result: reserved, reserved_unacked (202, but Kafka did not acknowledge: the order stays in the outbox and the jobs leader produces it again), already_bought, sold_out, sold_out_local (answered from the local flag), not_ready, unknown_item, redis_error, lookup_error (telling a made-up id from an item not ready failed), produce_failed (the order was never handed to Kafka and was not found stored: fenced and released, or the fence failed and the reservation was kept for the orphan reaper; one found stored counts as reserved), kafka_down (refused before reserving while the producer's breaker is open)."}, []string{"result"}),
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_orders_consumed_total",
			Help: "Orders the consumer stored, by outcome: created, failed (no MySQL stock), duplicate (redelivery, no-op)."}, []string{"outcome"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_order_retries_total",
			Help: "Transient failures storing an order that were retried."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_orders_dead_lettered_total",
			Help: "Orders given up on: sent to the dead-letter topic and the failure table."}),
		storeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cachesync_seckill_order_store_seconds",
			Help: "Time to store one order in MySQL, retries included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		canceled: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_unpaid_canceled_total",
			Help: "Orders canceled for not being paid in time (their stock returned)."}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_orphans_reaped_total",
			Help: "Pending reservations released because no order arrived."}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_rebuilds_total",
			Help: "Items whose Redis keys were rebuilt from MySQL."}),
		rebuildErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_rebuild_errors_total",
			Help: "Rebuilds that failed (retried later)."}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_rate_limited_total",
			Help: "Requests refused with 429, by limit (user, ip, auth: failed buyer authentications, admin_auth: failed admin authentications)."}, []string{"limit"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_auth_failures_total",
			Help: "Buyer requests refused with 401, by reason: missing, malformed, signature, expired, claims (iss, aud, nbf, iat), user (no valid user id), gateway (wrong gateway secret)."}, []string{"reason"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cachesync_seckill_drift",
			Help: "Disagreements between Redis and MySQL found by the last drift check, by kind."}, []string{"kind"}),
		checks: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachesync_seckill_drift_checks_total",
			Help: "Drift checks completed."}),
		jobRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_job_runs_total",
			Help: "Runs of the jobs role's periodic jobs in this process, by job (unpaid, outbox, orphans, ready, check, lag); only the holder of the jobs lease runs them."}, []string{"job"}),
		consumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cachesync_seckill_consumer_lag_messages",
			Help: "Orders in the topic that the consumer group has not committed yet, by partition; measured every job_interval by the holder of the jobs lease."}, []string{"partition"}),
		unknownItems: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_unknown_items_total",
			Help: "Requests for an item id that is no sale item (not in sk_items), answered 404 without a log line or a rebuild, by endpoint: reservation, item."}, []string{"endpoint"}),
		itemLookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_item_lookups_total",
			Help: "Item ids of not-ready requests looked up in MySQL because the known-items set could not be trusted (absent, or sk_items being snapshotted), by result: known, unknown, busy (too many at once: 503), error."}, []string{"result"}),
		outbox: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachesync_seckill_outbox_total",
			Help: "Outbox entries older than outbox_age handled by the jobs leader, by result: produced (Kafka acknowledged; entry removed), failed (retried on the next tick), invalid (not a message the reserve script wrote; removed, its reservation left to the orphan reaper)."}, []string{"result"}),
		outboxWaiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachesync_seckill_outbox_waiting",
			Help: "Outbox entries older than outbox_age still not acknowledged by Kafka after the jobs leader's last run: their units stay reserved, and the orphan reaper leaves them alone, until Kafka takes them."}),
		pipelined: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cachesync_seckill_reserve_pipeline_calls",
			Help:    "Reserve script calls sent in one Redis pipeline (the outbox acknowledgements that ride along are not counted): the mean (sum / count) is how many concurrent reservations share a round trip.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128}}),
	}
	if reg != nil {
		reg.MustRegister(m.reservations, m.consumed, m.retries, m.deadLettered, m.storeSeconds, m.canceled, m.reaped,
			m.rebuilds, m.rebuildErrors, m.limited, m.authFailures, m.drift, m.checks, m.jobRuns, m.consumerLag,
			m.unknownItems, m.itemLookups, m.outbox, m.outboxWaiting, m.pipelined)
	}
	return m
}

var driftKinds = []string{"stock", "pending", "orphan", "buyer_extra", "buyer_missing", "not_ready"}

func (m *metrics) observeCheck(r Result) {
	counts := map[string]int{}
	for _, d := range r.Drift {
		counts[d.Kind]++
	}
	for _, k := range driftKinds {
		m.drift.WithLabelValues(k).Set(float64(counts[k]))
	}
	m.checks.Inc()
}

// termEnded forgets the gauges that only the holder of the jobs lease
// keeps, so that a former holder does not go on reporting its last drift
// and lag beside the new holder's.
func (m *metrics) termEnded() {
	m.drift.Reset()
	m.consumerLag.Reset()
	m.outboxWaiting.Set(0)
}
