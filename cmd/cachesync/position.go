package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/sink"
	"github.com/rs/zerolog"
)

var positionShowCommand = &command{
	name:    "position show",
	summary: "print the stored binlog checkpoint, snapshot progress and lease holders",
	help: `Prints, from Redis: the checkpoint (the binlog position the CDC leader has
applied up to: file:pos, its version, the GTID and commit time of the last
transaction applied), the snapshot progress of tables not yet done, a pending
resync, and who holds the CDC lease (and the jobs lease, when held) with how
long the lease has left. Needs Redis only. Exit 1 when Redis cannot be read.`,
	setup: configOnly(positionShow),
}

var positionSetCommand = &command{
	name:    "position set",
	args:    "FILE:POS|GTID",
	summary: "move the stored checkpoint (refused while a leader holds the CDC lease)",
	help: `Replaces the stored checkpoint, so that the next CDC leader streams from
FILE:POS (mysql-bin.000042:1234) or from the binlog position after the GTID
set GTID (0-1-4711 on MariaDB, uuid:1-42 on MySQL; the server resolves it).

The position is checked on the server first: the file must be in SHOW BINARY
LOGS, the offset within its size and at a transaction boundary. The command
then takes the CDC lease itself, like a daemon, and writes the checkpoint with
the daemon's fencing: only while it holds the lease, and only if the checkpoint
is still the one it read (compare-and-set on its version). It releases the
lease at once; a standby takes it at its next poll and resumes from the new
position.

While a daemon holds the lease the command is refused, naming the holder and
how long its lease has left. Stop the daemons first (SIGTERM releases the
lease), or pass -force: the command then takes the lease from the leader, whose
next write is refused by fencing, so it steps down, stands by, and takes the
lease back once the command released it.

Caches: nothing is published and the invalidation seq counter is left alone.
Moving back replays the transactions in between: the per-key versions keep
newer values, their invalidations are published again and member sets
converge once the replay has passed the old position. Moving forward skips the
transactions in between: keys they changed stay stale in Redis, and in the L1
caches that read it (their invalidations are never published). The command
warns then; -resync (without a position) rebuilds everything instead: the
next leader deletes every key the rules own, announcing each to L1 caches,
and snapshots the stateful tables, streaming from the then-current position.

Exit 0 done, 1 refused or failed, 2 bad command line or configuration.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		force := fs.Bool("force", false, "take the CDC lease even from a live leader (it steps down)")
		resync := fs.Bool("resync", false, "instead of a position: delete the checkpoint and mark a resync (rebuild every key the rules own)")
		return func(args []string) int {
			switch {
			case *resync && len(args) > 0:
				return usageError(c, o, "-resync takes no position: a resync streams from the server's position when it runs")
			case !*resync && len(args) != 1:
				return usageError(c, o, "want one position, FILE:POS or a GTID set (or -resync)")
			}
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			target := ""
			if len(args) == 1 {
				target = args[0]
			}
			return positionSet(c, o, cfg, target, *force)
		}
	},
}

// positionShow prints what position show says.
func positionShow(c *command, o *stdio, cfg *config.Config) int {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	rdb := daemon.NewRedisClient(cfg.Redis)
	defer rdb.Close()
	fail := func(err error) int {
		fmt.Fprintf(o.err, "cachesync %s: %s: %v\n", c.name, describeRedis(cfg.Redis), err)
		return 1
	}
	ks := cfg.Sink.Keyspace()
	a, err := sink.NewApplier(cfg.Sink, rdb, zerolog.Nop(), nil)
	if err != nil {
		return fail(err)
	}
	cp, ok, err := sink.ReadCheckpoint(ctx, rdb, ks)
	if err != nil {
		return fail(err)
	}
	pending, requested, err := a.SnapshotProgress(ctx)
	if err != nil {
		return fail(err)
	}
	changed, err := a.RulesChanged(ctx)
	if err != nil {
		return fail(err)
	}
	resync, err := a.ResyncPending(ctx)
	if err != nil {
		return fail(err)
	}
	journal, err := rdb.Exists(ctx, ks.Snapshot()).Result()
	if err != nil {
		return fail(err)
	}
	el := leader.New(cfg.HA, rdb, ks, zerolog.Nop(), nil)
	cdc, err := el.Inspect(ctx, "cdc")
	if err != nil {
		return fail(err)
	}
	jobs, err := el.Inspect(ctx, "jobs")
	if err != nil {
		return fail(err)
	}

	w := o.out
	line := func(label, format string, a ...any) {
		if label != "" {
			label += ":"
		}
		fmt.Fprintf(w, "%-13s %s\n", label, fmt.Sprintf(format, a...))
	}
	if ok {
		line("checkpoint", "%s (version %d)", cp.Pos, cp.Version)
		line("gtid", "%s", orNone(cp.GTID, "none recorded"))
		if cp.Commit.IsZero() {
			line("last commit", "unknown (set by cachesync position set)")
		} else {
			line("last commit", "%s (%s ago): the last transaction applied", cp.Commit.UTC().Format(time.RFC3339Nano), time.Since(cp.Commit).Round(time.Second))
		}
	} else {
		line("checkpoint", "none: a daemon begins per mysql.start.from (with stateful rules, a snapshot)")
	}
	switch {
	case len(pending) == 0 && journal == 0:
		line("snapshot", "none pending")
	case len(pending) == 0:
		line("snapshot", "a snapshot began without a checkpoint and did not finish (journal %s)", ks.Snapshot())
	default:
		for i, t := range slices.Sorted(maps.Keys(pending)) {
			label := ""
			if i == 0 {
				label = "snapshot"
			}
			switch {
			case slices.Contains(requested, t):
				line(label, "%s: requested, not begun", t)
			case pending[t] == "":
				line(label, "%s: begun, no chunk in Redis yet", t)
			default:
				line(label, "%s: in progress, after key %s", t, pending[t])
			}
		}
	}
	if ok && len(changed) > 0 {
		line("rules changed", "%s: not the rules of the last snapshot; the next leader to start snapshots them again", strings.Join(changed, ", "))
	}
	if resync {
		line("resync", "pending (%s): the next leader deletes the keys the rules own and snapshots them", ks.Resync())
	}
	if cdc == nil {
		line("cdc lease", "free: no daemon leads (%s)", ks.Leader("cdc"))
	} else {
		line("cdc lease", "%s", describeHolder(cdc))
	}
	if jobs != nil {
		line("jobs lease", "%s", describeHolder(jobs))
	}
	return 0
}

func describeHolder(h *leader.Holder) string {
	return fmt.Sprintf("held by %q (token %d), %s left unless renewed", h.ID, h.Token, h.Left.Round(time.Millisecond))
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// positionSet moves the checkpoint to target (FILE:POS or a GTID set), or,
// with target "", marks a resync. See positionSetCommand.
func positionSet(c *command, o *stdio, cfg *config.Config, target string, force bool) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	fail := func(format string, a ...any) int {
		fmt.Fprintf(o.err, "cachesync %s: %s\n", c.name, fmt.Sprintf(format, a...))
		return 1
	}
	rdb := daemon.NewRedisClient(cfg.Redis)
	defer rdb.Close()
	ks := cfg.Sink.Keyspace()
	a, err := sink.NewApplier(cfg.Sink, rdb, zerolog.Nop(), nil)
	if err != nil {
		return fail("%v", err)
	}
	ha := cfg.HA
	host, _ := os.Hostname()
	ha.ID = "position-set/" + host + ":" + strconv.Itoa(os.Getpid())
	el := leader.New(ha, rdb, ks, zerolog.Nop(), nil)
	refuse := func(h *leader.Holder) int {
		return fail("refused: the CDC lease (%s) is %s: a live leader goes on from its own position. "+
			"Stop the daemons first (SIGTERM releases the lease at once), or pass -force to take the lease from it (its next write is refused and it steps down)",
			ks.Leader("cdc"), describeHolder(h))
	}

	// A first look, so that a refusal does not wait for MySQL.
	h, err := el.Inspect(ctx, "cdc")
	if err != nil {
		return fail("%s: %v", describeRedis(cfg.Redis), err)
	}
	if h != nil && !force {
		return refuse(h)
	}
	var want sink.Checkpoint
	if target != "" {
		if want, err = resolvePosition(ctx, cfg, target); err != nil {
			return fail("%v", err)
		}
	}

	lease := el.Lease("cdc")
	var term *leader.Term
	if force {
		term, err = lease.Seize(ctx)
	} else {
		term, _, err = lease.TryTake(ctx)
	}
	if err != nil {
		return fail("take the CDC lease: %s: %v", describeRedis(cfg.Redis), err)
	}
	if term == nil { // taken by a daemon since the first look
		if h, err = el.Inspect(ctx, "cdc"); err != nil || h == nil {
			return fail("refused: a daemon took the CDC lease meanwhile")
		}
		return refuse(h)
	}
	defer term.Release()
	if h != nil {
		fmt.Fprintf(o.err, "cachesync %s: took the CDC lease from %q (token %d) by -force: its next write is refused, it steps down and stands by\n", c.name, h.ID, h.Token)
	}
	fence := sink.Fence{Key: term.Key, Value: term.Value}

	if target == "" {
		if err := a.BeginResync(term.Context(), fence); err != nil {
			return fail("mark the resync: %v", err)
		}
		fmt.Fprintf(o.out, "ok: checkpoint deleted and resync marked (%s). The next CDC leader deletes every key the rules own, announcing each on %s, snapshots the stateful tables and streams from the server's position then. Readers miss those keys until the snapshot has run.\n",
			ks.Resync(), cfg.Sink.Channel)
		return 0
	}

	cur, had, err := sink.ReadCheckpoint(term.Context(), rdb, ks)
	if err != nil {
		return fail("%v", err)
	}
	if had && cur.Pos == want.Pos {
		fmt.Fprintf(o.out, "ok: the checkpoint is already %s (version %d); nothing changed\n", cur.Pos, cur.Version)
		return 0
	}
	var expect *sink.Checkpoint
	if had {
		expect = &cur
	}
	err = sink.SetCheckpoint(term.Context(), rdb, ks, fence, expect, want)
	switch {
	case errors.Is(err, sink.ErrResyncPending):
		return fail("refused: a resync is pending (%s): the next leader deletes the checkpoint and rebuilds from a snapshot at the server's position then, which would undo this. Let it finish (cachesync position show), then set the position", ks.Resync())
	case errors.Is(err, sink.ErrConflict):
		return fail("refused: the checkpoint changed while this command held the lease: %v", err)
	case err != nil:
		return fail("%v", err)
	}
	gtid := ""
	if want.GTID != "" {
		gtid = ", gtid " + want.GTID
	}
	if had {
		fmt.Fprintf(o.out, "ok: checkpoint set to %s (version %d%s), was %s (version %d)\n", want.Pos, want.Version, gtid, cur.Pos, cur.Version)
	} else {
		fmt.Fprintf(o.out, "ok: checkpoint set to %s (version %d%s); none was stored\n", want.Pos, want.Version, gtid)
	}
	warnMove(o, cfg, a, cur, had, want)
	return 0
}

// resolvePosition turns FILE:POS or a GTID set into a checkpoint the
// server can stream from (binlog.CheckPosition).
func resolvePosition(ctx context.Context, cfg *config.Config, target string) (sink.Checkpoint, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	db, info, err := daemon.OpenMySQL(cctx, cfg.MySQL)
	if err != nil {
		return sink.Checkpoint{}, err
	}
	defer db.Close()
	var cp sink.Checkpoint
	// A binlog file name has a dot before its number; a GTID never has one.
	if strings.Contains(target, ".") {
		if cp.Pos, err = binlog.ParsePosition(target); err != nil {
			return cp, err
		}
	} else {
		if cp.Pos, err = binlog.PositionOfGTID(cctx, cfg.MySQL, info.Flavor, target, 15*time.Second); err != nil {
			return cp, err
		}
		cp.GTID = target
	}
	if cp.Version, err = cp.Pos.Version(); err != nil {
		return cp, err
	}
	if err := binlog.CheckPosition(cctx, db, cp.Pos); err != nil {
		return cp, err
	}
	return cp, nil
}

// warnMove says what moving the checkpoint from cur (had: one was stored)
// to want leaves in the caches.
func warnMove(o *stdio, cfg *config.Config, a *sink.Applier, cur sink.Checkpoint, had bool, want sink.Checkpoint) {
	stateful := a.Rules().Stateful()
	series := func(p binlog.Position) string { return p.File[:strings.LastIndexByte(p.File, '.')+1] }
	switch {
	case !had:
		msg := "no checkpoint was stored: the next leader streams from here without a snapshot (as mysql.start.from: position does)"
		if len(stateful) > 0 {
			msg += fmt.Sprintf("; the keys of rows of %s not changed since are missing until snapshotted (cachesync snapshot -table T), or rebuild everything with -resync", strings.Join(stateful, ", "))
		}
		fmt.Fprintln(o.err, "warning: "+msg)
	case series(cur.Pos) != series(want.Pos):
		fmt.Fprintf(o.err, "warning: %s and %s are different binlog series: their versions do not compare, and per-key versions of the old one can hold back newer writes; rebuild with -resync unless you know both are one server's history\n", cur.Pos, want.Pos)
	case want.Version > cur.Version:
		fmt.Fprintf(o.err, "warning: moved forward: the transactions between %s and %s are skipped, never applied. Keys they changed stay stale in Redis and in the L1 caches that read it (their invalidations are never published). To rebuild every key the rules own instead, run cachesync position set -resync", cur.Pos, want.Pos)
		if len(stateful) > 0 {
			fmt.Fprintf(o.err, "; to refresh the keys of rows that still exist, cachesync snapshot -table T for %s", strings.Join(stateful, ", "))
		}
		fmt.Fprintln(o.err)
	default:
		fmt.Fprintf(o.out, "moved back: the next leader replays the transactions from %s to %s again; per-key versions keep newer values, their invalidations are published again, and member sets converge once the replay has passed %s\n", want.Pos, cur.Pos, cur.Pos)
	}
}
