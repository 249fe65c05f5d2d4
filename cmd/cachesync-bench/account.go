package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// parseStatCPU returns utime + stime from the text of /proc/PID/stat
// (fields 14 and 15, in clock ticks of 1/100 s on Linux). The process name,
// field 2, is in parentheses and may hold spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %.40q: no ')'", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %.40q: too few fields", stat)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("stat: utime %q, stime %q: not numbers", f[11], f[12])
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// statCPU is parseStatCPU of /proc/pid/stat.
func statCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// selfCPU is this process's user + system time from getrusage, which
// counts in microseconds where /proc/self/stat counts in 10 ms ticks.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// parseLoadavg returns the 1-minute load average from /proc/loadavg's text.
func parseLoadavg(s string) (float64, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, fmt.Errorf("loadavg %q: empty", s)
	}
	return strconv.ParseFloat(f[0], 64)
}

// loadavg is the 1-minute load average, or -1 if it cannot be read.
func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	l, err := parseLoadavg(string(b))
	if err != nil {
		return -1
	}
	return l
}

// cdcUse is the CPU time of the processes a CDC pipeline runs on.
type cdcUse struct{ self, redis, mariadb time.Duration }

func (u cdcUse) sub(v cdcUse) cdcUse {
	return cdcUse{self: u.self - v.self, redis: u.redis - v.redis, mariadb: u.mariadb - v.mariadb}
}

// window is one measured run: wall time, CPU of each process and the load
// average at both ends. begin collects garbage first, so that a previous
// run's heap is not collected on this run's account.
type window struct {
	redisPIDs, mariadbPIDs []int    // every process of each server (a cluster's six nodes)
	profile                string   // CPU profile of the window, if set
	pf                     *os.File // open while profiling

	t0    time.Time
	c0    cdcUse
	took  time.Duration
	use   cdcUse
	load0 float64
	load1 float64
	err   error // of reading a server's CPU
}

func (w *window) read() cdcUse {
	return cdcUse{self: selfCPU(), redis: w.cpu(w.redisPIDs), mariadb: w.cpu(w.mariadbPIDs)}
}

// cpu is the sum of the processes' CPU time; the first error is kept.
func (w *window) cpu(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		d, err := statCPU(pid)
		if err != nil && w.err == nil {
			w.err = err
		}
		sum += d
	}
	return sum
}

func (w *window) begin() {
	runtime.GC()
	w.load0 = loadavg()
	w.c0 = w.read()
	if w.profile != "" {
		f, err := os.Create(w.profile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil && w.err == nil {
			w.err = err
		}
		w.pf = f
	}
	w.t0 = time.Now()
}

func (w *window) finish() {
	w.took = time.Since(w.t0)
	if w.pf != nil {
		pprof.StopCPUProfile()
		w.pf.Close()
	}
	w.use = w.read().sub(w.c0)
	w.load1 = loadavg()
}

// median returns the middle value of xs (the mean of the two middle ones
// for an even count); 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, which is taken as it is: negative values count like any other
// (a negative latency is a finding to report, never a 0).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1 // ceil(n·p/100) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// cmdStat is one command's line of Redis INFO commandstats.
type cmdStat struct {
	name  string
	calls int64
	usec  int64
}

// parseCommandstats reads the cmdstat_ lines of INFO commandstats
// ("cmdstat_set:calls=3,usec=12,usec_per_call=4.00,…"), most usec first.
func parseCommandstats(info string) []cmdStat {
	var out []cmdStat
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		c := cmdStat{name: strings.TrimPrefix(name, "cmdstat_")}
		for kv := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				c.calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				c.usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out = append(out, c)
	}
	slices.SortStableFunc(out, func(a, b cmdStat) int { return int(b.usec - a.usec) })
	return out
}
