package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/redis/go-redis/v9"
)

func TestParseStatCPU(t *testing.T) {
	for _, c := range []struct {
		stat string
		want time.Duration
		err  bool
	}{
		// Linux 6.x, fields 14 and 15 are 1234 and 56 ticks.
		{"4242 (redis-server) S 1 4242 4242 0 -1 4194560 1020 0 0 0 1234 56 0 0 20 0 5 0 100 1000 200", 12900 * time.Millisecond, false},
		// A name with spaces and a ')' must not shift the fields.
		{"7 (a b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1", 70 * time.Millisecond, false},
		{"7 (x) R 1 7", 0, true},
		{"no parenthesis", 0, true},
		{"7 (x) R 1 7 7 0 -1 0 0 0 0 0 u s 0", 0, true},
	} {
		got, err := parseStatCPU(c.stat)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("parseStatCPU(%q) = %v, %v; want %v, error %v", c.stat, got, err, c.want, c.err)
		}
	}
}

func TestStatCPUSelf(t *testing.T) {
	// This process's own tick count must be readable and not exceed
	// getrusage's (both count the same time; ticks round down).
	d, err := statCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ru := selfCPU(); d > ru+20*time.Millisecond {
		t.Errorf("/proc/self/stat %v > getrusage %v", d, ru)
	}
}

func TestParseLoadavg(t *testing.T) {
	if l, err := parseLoadavg("3.25 6.66 8.31 6/199 20670\n"); err != nil || l != 3.25 {
		t.Errorf("parseLoadavg = %v, %v; want 3.25", l, err)
	}
	if _, err := parseLoadavg(""); err == nil {
		t.Error("parseLoadavg(\"\") gave no error")
	}
}

func TestMedian(t *testing.T) {
	xs := []float64{3, 1, 2}
	for _, c := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{5}, 5}, {xs, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.xs); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
	if !slices.Equal(xs, []float64{3, 1, 2}) {
		t.Errorf("median sorted its argument: %v", xs)
	}
}

func TestPercentileKeepsNegatives(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	lats := []time.Duration{ms(-3), ms(-1), ms(1), ms(2), ms(5)}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{1, ms(-3)}, {20, ms(-3)}, {21, ms(-1)}, {40, ms(-1)}, {50, ms(1)}, {99, ms(5)}, {100, ms(5)}} {
		if got := percentile(lats, c.p); got != c.want {
			t.Errorf("percentile(p%v) = %v, want %v", c.p, got, c.want)
		}
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(i + 1)
	}
	if got := percentile(hundred, 99); got != ms(99) {
		t.Errorf("p99 of 1..100 ms = %v, want 99ms", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil) = %v", got)
	}
}

func TestParseCommandstats(t *testing.T) {
	info := "# Commandstats\r\n" +
		"cmdstat_set:calls=300,usec=450,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_evalsha:calls=150,usec=9000,usec_per_call=60.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_config|resetstat:calls=1,usec=3,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n"
	got := parseCommandstats(info)
	want := []cmdStat{{"evalsha", 150, 9000}, {"set", 300, 450}, {"config|resetstat", 1, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("parseCommandstats = %v, want %v", got, want)
	}
}

func TestFloorRows(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	names := []string{"id", "v", "name", "price"}
	pipe := rdb.Pipeline()
	update := [][]any{
		{int32(7), int32(1), "item-7", "7.50"}, {int32(7), int32(2), "item-7", "7.50"}, // before, after
		{int32(8), int32(1), `a "b"`, "8.50"}, {int32(8), int32(2), `a "b"`, "8.50"},
	}
	if err := floorRows(ctx, pipe, replication.EnumRowsEventTypeUpdate, update, names); err != nil {
		t.Fatal(err)
	}
	if err := floorRows(ctx, pipe, replication.EnumRowsEventTypeDelete, [][]any{{int32(9), int32(0), "x", "0.50"}}, names); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range pipe.Cmds() {
		var args []string
		for _, a := range c.Args() {
			args = append(args, fmt.Sprintf("%s", a))
		}
		got = append(got, strings.Join(args, " "))
	}
	want := []string{
		`set tj:7 {"id":7,"name":"item-7","price":"7.50","v":2}`,
		`set tj:8 {"id":8,"name":"a \"b\"","price":"8.50","v":2}`,
		`del tj:9`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("floor queued\n%q\nwant\n%q", got, want)
	}
}
