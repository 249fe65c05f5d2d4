package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/harness"
)

// consistency runs the four schemes of package harness, without and with
// an injected fill delay, and prints one Markdown table.
func consistency(args []string) error {
	fs := flag.NewFlagSet("consistency", flag.ContinueOnError)
	dur := fs.Duration("duration", 10*time.Second, "read/write phase per scheme")
	delay := fs.Duration("delay", 30*time.Millisecond, "fill delay of the race runs")
	rows := fs.Int("rows", 1000, "rows in the table")
	readers := fs.Int("readers", 16, "reader goroutines")
	writeRate := fs.Int("write-rate", 400, "writes/s offered")
	out := fs.String("out", "", "also write the table to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	e, stop, err := startEnv()
	if err != nil {
		return err
	}
	defer stop()
	env := harness.Env{DB: e.db, Redis: e.rdb, Flavor: "mariadb",
		MySQL: binlog.Config{Addr: e.my.Addr(), User: "root", Flavor: "mariadb", ServerID: 9200}}

	var b strings.Builder
	base := harness.Options{Rows: *rows, Readers: *readers, WriteRate: *writeRate, Duration: *dur}
	fmt.Fprintf(&b, "%d rows, %d readers, %d writes/s offered by 4 writers, %s per scheme; stale read = older than the newest version committed %s before the read began.\n\n",
		base.Rows, base.Readers, base.WriteRate, base.Duration, 100*time.Millisecond)
	fmt.Fprintf(&b, "| scheme | fill delay | reads/s | writes/s | read p50 | read p99 | stale reads | stale keys after quiescence (Redis / L1) |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---:|\n")
	var rates = map[harness.Scheme]float64{}
	for _, d := range []time.Duration{0, *delay} {
		for _, s := range harness.Schemes {
			o := base
			o.FillDelay = d
			fmt.Fprintf(os.Stderr, "%s, fill delay %s…\n", s, d)
			r, err := harness.Run(ctx, env, s, o)
			if err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
			if d == 0 {
				rates[s] = r.ReadRate
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %s | %s | %d | %d / %d |\n", s, d, r.ReadRate, r.WriteRate,
				ms(r.P50), ms(r.P99), r.StaleReads, r.StaleKeys, r.StaleL1)
		}
	}
	fmt.Fprintf(&b, "\nScheme 4 read throughput without delay: %.2f× scheme 1, %.1f× scheme 2.\n",
		rates[harness.CDCLease]/rates[harness.DeleteAfterUpdate], rates[harness.CDCLease]/rates[harness.ForUpdate])
	return emit(b.String(), *out)
}
