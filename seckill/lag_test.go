package seckill_test

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConsumerLagMetric: the holder of the jobs lease reports, per
// partition, the orders the consumer group has not committed yet. With no
// consumer running, four reservations make a lag of four; once a consumer
// starts it falls to zero. When the holder loses the lease, it stops
// reporting lag and drift (a former holder's last values must not keep an
// alert firing beside the new holder's).
func TestConsumerLagMetric(t *testing.T) {
	standaloneOnly(t, whyKafka)
	const item = 51
	s := newStack(t)
	d := s.start("roles: [api, jobs]\ncheck_interval: 300ms")
	s.addItem(item, 10)
	for user := int64(1); user <= 4; user++ {
		r, err := d.reserve(item, user)
		if err != nil || r.Status != 202 {
			t.Fatalf("reserve user %d: %v %d %s", user, err, r.Status, r.Raw)
		}
	}
	lag := func() (float64, int) {
		m := series(t, d, "cachesync_seckill_consumer_lag_messages")
		sum := 0.0
		for _, v := range m {
			sum += v
		}
		return sum, len(m)
	}
	s.eventually(20*time.Second, "consumer lag 4 with no consumer", func() bool { n, _ := lag(); return n == 4 })
	if _, parts := lag(); parts != 8 {
		t.Errorf("lag reported for %d partitions, want the topic's 8", parts)
	}
	s.start("roles: [consumer]")
	s.eventually(30*time.Second, "consumer lag 0 once a consumer stored the orders", func() bool { n, _ := lag(); return n == 0 })
	s.eventually(10*time.Second, "a drift check", func() bool { return len(series(t, d, "cachesync_seckill_drift")) > 0 })

	// Another holder takes the jobs lease: d's term ends at its next renewal.
	if err := s.rdb.Set(context.Background(), s.jobsLeaseKey(), "1 intruder", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	s.eventually(10*time.Second, "d a standby of the jobs lease", func() bool {
		return metric(t, d, `cachesync_leader{lease="jobs"}`) == 0
	})
	if _, parts := lag(); parts != 0 {
		t.Errorf("a standby reports lag for %d partitions, want none", parts)
	}
	if m := series(t, d, "cachesync_seckill_drift"); len(m) != 0 {
		t.Errorf("a standby reports drift: %v", m)
	}
}

// series returns every sample of the metric name in d's /metrics by its
// labels ("{partition=\"3\"}", or "" for none).
func series(t *testing.T, d *node, name string) map[string]float64 {
	t.Helper()
	r, err := call("GET", d.admin+"/metrics", "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(r.Raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err != nil {
			t.Fatalf("%s%s: %v", name, rest, err)
		}
		out[rest[:i]] = v
	}
	return out
}
