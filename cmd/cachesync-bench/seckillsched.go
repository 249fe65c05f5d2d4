package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"
)

// schedSnap is what explains a latency tail: this process's Go scheduler
// latencies and GC pauses (runtime/metrics, cumulative), the run-queue
// wait of the processes' threads (/proc/PID/task/*/schedstat) and the
// machine's CPU pressure (/proc/pressure/cpu).
type schedSnap struct {
	rt       []metrics.Sample
	hist     []*metrics.Float64Histogram // the histograms of rt, copied
	wait     map[string]time.Duration    // process name → summed thread run-queue wait
	pressure time.Duration               // "some" CPU pressure total
	at       time.Time
}

var schedNames = []string{
	"/sched/latencies:seconds",
	"/sched/pauses/total/gc:seconds",
	"/gc/cycles/total:gc-cycles",
	"/cpu/classes/gc/total:cpu-seconds",
}

func readSched(pids map[string]int) schedSnap {
	s := schedSnap{rt: make([]metrics.Sample, len(schedNames)), wait: map[string]time.Duration{}, at: time.Now()}
	for i, n := range schedNames {
		s.rt[i].Name = n
	}
	metrics.Read(s.rt)
	s.hist = make([]*metrics.Float64Histogram, len(s.rt))
	for i := range s.rt {
		if s.rt[i].Value.Kind() == metrics.KindFloat64Histogram {
			h := s.rt[i].Value.Float64Histogram()
			s.hist[i] = &metrics.Float64Histogram{Counts: slices.Clone(h.Counts), Buckets: h.Buckets}
		}
	}
	for name, pid := range pids {
		s.wait[name] = runQueueWait(pid)
	}
	s.pressure = cpuPressure()
	return s
}

// runQueueWait sums the time pid's threads spent runnable but waiting for
// a CPU (the second field of schedstat, in ns).
func runQueueWait(pid int) time.Duration {
	p := "self"
	if pid != 0 {
		p = strconv.Itoa(pid)
	}
	files, _ := filepath.Glob("/proc/" + p + "/task/*/schedstat")
	var sum time.Duration
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if fs := strings.Fields(string(b)); len(fs) >= 2 {
			ns, _ := strconv.ParseInt(fs[1], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

// cpuPressure is the total time some task waited for a CPU (PSI), or 0.
func cpuPressure() time.Duration {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				us, _ := strconv.ParseInt(v, 10, 64)
				return time.Duration(us) * time.Microsecond
			}
		}
	}
	return 0
}

// quantile of the difference of two cumulative histograms, as the upper
// bound of the bucket it falls in.
func quantile(a, b *metrics.Float64Histogram, q float64) (float64, uint64) {
	var total uint64
	d := make([]uint64, len(b.Counts))
	for i := range b.Counts {
		d[i] = b.Counts[i] - a.Counts[i]
		total += d[i]
	}
	if total == 0 {
		return 0, 0
	}
	want := uint64(math.Ceil(q * float64(total)))
	var n uint64
	for i, c := range d {
		n += c
		if n >= want {
			return b.Buckets[i+1], total
		}
	}
	return b.Buckets[len(b.Buckets)-1], total
}

// report says what happened between s and t, per request for n requests.
func (s schedSnap) report(t schedSnap, n float64) string {
	el := t.at.Sub(s.at)
	var b strings.Builder
	if s.hist[0] != nil {
		p99, cnt := quantile(s.hist[0], t.hist[0], 0.99)
		p999, _ := quantile(s.hist[0], t.hist[0], 0.999)
		fmt.Fprintf(&b, "Go scheduler latency in this process (runnable → running, %d goroutine wake-ups): p99 ≤ %s, p99.9 ≤ %s. ", cnt, secs(p99), secs(p999))
	}
	if s.hist[1] != nil {
		p99, cnt := quantile(s.hist[1], t.hist[1], 0.99)
		maxP, _ := quantile(s.hist[1], t.hist[1], 1)
		fmt.Fprintf(&b, "GC: %d cycles, %d stop-the-world pauses, p99 ≤ %s, longest ≤ %s; GC CPU %.1f µs per request. ",
			t.rt[2].Value.Uint64()-s.rt[2].Value.Uint64(), cnt, secs(p99), secs(maxP),
			(t.rt[3].Value.Float64()-s.rt[3].Value.Float64())*1e6/n)
	}
	fmt.Fprintf(&b, "Run-queue wait (threads runnable but not running, summed; CPU oversubscription) over %s:", el.Round(100*time.Millisecond))
	for _, name := range []string{"this process", "Redis", "Kafka broker", "MariaDB"} {
		if w, ok := t.wait[name]; ok {
			fmt.Fprintf(&b, " %s %.2f s", name, (w - s.wait[name]).Seconds())
		}
	}
	if t.pressure > 0 {
		fmt.Fprintf(&b, "; CPU pressure (some task waiting for a CPU): %.0f %% of the time", 100*(t.pressure-s.pressure).Seconds()/el.Seconds())
	}
	b.WriteString(".")
	return b.String()
}

func secs(v float64) string {
	if math.IsInf(v, 1) {
		return "∞"
	}
	return time.Duration(v * float64(time.Second)).Round(time.Microsecond).String()
}
