// Package sink applies binlog transactions to Redis by declarative rules.
//
// Each batch of consecutive transactions becomes ONE Lua script call that
// performs every rule's writes, stores the checkpoint and publishes the
// invalidation message: Redis is never seen half-way through a transaction,
// the checkpoint never runs ahead of the data, and an invalidation is never
// lost between the write and its announcement.
//
// Invalidation messages are JSON on the configured channel:
//
//	{"seq":42,"keys":["goods:1","goods:list"]}
//
// A key that is not UTF-8 (one named by a binary column) cannot be a JSON
// string: it is listed, in standard base64, in a second array that is
// present only when needed:
//
//	{"seq":43,"keys":["goods:1"],"keys_b64":["Z29vZHM6AP8="]}
//
// seq grows by one per message (a Redis counter written by the same
// script), so a subscriber that sees a gap, or a seq lower than the last
// one (Redis lost its data), must treat every key as invalidated.
package sink

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

//go:embed apply.lua
var applyLua string

// ErrRedisReset means Redis lost its data (the checkpoint vanished): the
// state must be rebuilt from a snapshot before streaming again.
var ErrRedisReset = errors.New("redis lost its data: checkpoint missing")

// ErrRewind means Redis went back in time: the stored checkpoint is older
// than what this writer applied (an RDB/AOF restore, a failover to a
// lagging replica), so the batches in between are lost there. Resume from
// the stored checkpoint: replaying is harmless.
var ErrRewind = errors.New("redis went back in time: checkpoint older than applied")

// ErrFenced means this writer's lease term is over (another process took
// the lease, or it expired): nothing of the batch was applied; step down.
var ErrFenced = errors.New("refused by fencing: this process no longer holds the lease")

// ErrConflict means another writer moved the checkpoint past what this one
// applied: nothing of the batch was applied; step down.
var ErrConflict = errors.New("checkpoint moved by another writer")

// ErrScript means Redis refused a batch for a reason no retry cures (a
// key of the wrong type, a script error, missing permissions): the
// pipeline stops, naming the rule and key, instead of retrying forever.
var ErrScript = errors.New("redis refused the batch")

// ErrRule means a rule cannot be applied to a row as the binlog wrote it
// (a column was dropped or renamed). Nothing past the last checkpoint was
// applied; fix the rules and restart.
var ErrRule = errors.New("rule does not fit the binlog row")

// Checkpoint is the binlog position the sink has applied up to.
type Checkpoint struct {
	Pos     binlog.Position
	Version uint64
	GTID    string
	Commit  time.Time
}

// Fence is the lease term a writer applies under: every batch's script
// checks that Key still holds Value and refuses the batch otherwise
// (ErrFenced). The zero Fence applies unfenced (tests of the sink alone).
type Fence struct{ Key, Value string }

// Resume says what Run can rely on when it starts.
type Resume struct {
	// Expect is the stored checkpoint streaming resumes from; the first
	// batch must find it unchanged (compare-and-set), and every batch the
	// one before it wrote. Nil: there is none yet (a snapshot, or a
	// configured start).
	Expect *Checkpoint
	Fence  Fence
	// ClockOffset is MySQL's clock minus this host's
	// (binlog.ClockOffset): a commit time is compared with now+ClockOffset
	// to tell a catch-up from live traffic (see catchUpAge).
	ClockOffset time.Duration
}

// While catching up (the newest transaction of a batch committed at least
// catchUpAge ago by MySQL's clock; the binlog's commit times have second
// resolution), a batch that is not full waits up to catchUpWait for more
// transactions before it is sent. Larger batches cost Redis and this
// process less per row (each call has its checks, its checkpoint and its
// round trips), as a plain syncer's large pipelines do; the parser keeps
// the CPU busy meanwhile. Live batches never wait.
const (
	catchUpAge  = 2 * time.Second
	catchUpWait = 10 * time.Millisecond
)

// Applier applies transactions to Redis. It is driven by one goroutine
// calling Run.
type Applier struct {
	cfg     Config
	ks      keyspace.Keyspace
	rules   *Rules
	rdb     redis.UniversalClient
	log     zerolog.Logger
	m       *metrics
	script  *redis.Script
	bound   map[*binlog.Table][]*boundRule
	healthy atomic.Bool
	applied atomic.Pointer[Checkpoint]
	lastSeq atomic.Int64 // last seq this applier published
	// snapDone counts the snapshot's tables whose last chunk was applied.
	snapDone atomic.Int64
	// Retry is the back-off between failed script calls (for tests).
	newBackOff func() backoff.BackOff
	cs         *clusterState // on a Redis Cluster: see applySlots
	// checked, if set, runs between applyDirect's checks and its EXEC
	// (for tests of the WATCH).
	checked func()
}

// NewApplier compiles the rules of cfg (already validated). A
// *redis.ClusterClient needs cfg.Cluster, and cfg.Cluster needs one.
func NewApplier(cfg Config, rdb redis.UniversalClient, log zerolog.Logger, reg prometheus.Registerer) (*Applier, error) {
	cc, cluster := rdb.(*redis.ClusterClient)
	if cluster != cfg.Cluster {
		return nil, fmt.Errorf("sink: a Redis Cluster client needs the cluster keyspace and only it (client is a cluster: %v, sink.Cluster: %v)", cluster, cfg.Cluster)
	}
	rules, err := CompileRules(cfg.Rules)
	if err != nil {
		return nil, err
	}
	a := &Applier{
		cfg:    cfg,
		ks:     cfg.Keyspace(),
		rules:  rules,
		rdb:    rdb,
		log:    log,
		m:      newMetrics(reg),
		script: redis.NewScript(applyLua),
		bound:  make(map[*binlog.Table][]*boundRule),
		newBackOff: func() backoff.BackOff {
			bo := backoff.NewExponentialBackOff()
			bo.InitialInterval = 50 * time.Millisecond
			bo.MaxInterval = 5 * time.Second
			return bo
		},
	}
	if cluster {
		a.cs = newClusterState(cc)
	}
	a.healthy.Store(true)
	return a, nil
}

// Rules returns the compiled rules.
func (a *Applier) Rules() *Rules { return a.rules }

// Healthy is false while Redis calls fail.
func (a *Applier) Healthy() bool { return a.healthy.Load() }

// Applied returns the last checkpoint this applier wrote (nil before any).
func (a *Applier) Applied() *Checkpoint { return a.applied.Load() }

// ReadCheckpoint loads the stored checkpoint; ok is false when there is none.
func (a *Applier) ReadCheckpoint(ctx context.Context) (cp Checkpoint, ok bool, err error) {
	return ReadCheckpoint(ctx, a.rdb, a.ks)
}

// ReadCheckpoint loads the checkpoint stored under ks.
func ReadCheckpoint(ctx context.Context, rdb redis.UniversalClient, ks keyspace.Keyspace) (Checkpoint, bool, error) {
	h, err := rdb.HGetAll(ctx, ks.Checkpoint()).Result()
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint: %w", err)
	}
	if len(h) == 0 {
		return Checkpoint{}, false, nil
	}
	pos, err := strconv.ParseUint(h["pos"], 10, 32)
	if err != nil || h["file"] == "" {
		return Checkpoint{}, false, fmt.Errorf("checkpoint %s is corrupt: %v", ks.Checkpoint(), h)
	}
	cp := Checkpoint{Pos: binlog.Position{File: h["file"], Pos: uint32(pos)}, GTID: h["gtid"]}
	cp.Version, _ = strconv.ParseUint(h["version"], 10, 64)
	if us, err := strconv.ParseInt(h["commit_us"], 10, 64); err == nil {
		cp.Commit = time.UnixMicro(us)
	}
	return cp, true, nil
}

// Run applies the transactions read from in, in order, batching those that
// are already queued, until in is closed or ctx is done; both return nil
// after the batch in flight was applied. Every batch is fenced by
// r.Fence and compare-and-sets the checkpoint, starting from r.Expect.
// It returns:
//   - ErrRedisReset when the checkpoint vanished (Redis lost its data), or,
//     without r.Expect (a snapshot), the snapshot journal the first batch
//     created vanished before the checkpoint was written;
//   - ErrRewind when the stored checkpoint went back (resume from it);
//   - ErrFenced or ErrConflict when another writer took over (step down);
//   - an error wrapping ErrRule when a rule does not fit a row.
//
// The next batch notices each of these; while no transaction arrives, a
// check every second does. A failing Redis call is retried with back-off
// for as long as it takes (Healthy is false meanwhile): nothing is skipped.
func (a *Applier) Run(ctx context.Context, in <-chan *binlog.Txn, r Resume) error {
	b := newBatch(a.ks, r.Fence)
	guard, expect := guardFirst, ""
	stored := "none yet" // what a rule error tells the operator to resume from
	if r.Expect != nil {
		guard, expect = guardCheckpoint, strconv.FormatUint(r.Expect.Version, 10)
		stored = r.Expect.Pos.String()
	}
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	fillWait := time.NewTimer(time.Hour)
	fillWait.Stop()
	if a.cs != nil {
		clear(a.cs.marks)
		a.cs.start = r.Expect
		if r.Fence.Value != "" {
			if err := a.retry(ctx, "recording the fencing token in the slots failed; retrying", func(e *zerolog.Event) *zerolog.Event { return e },
				func() error { return a.fenceSlots(ctx, r.Fence) }); err != nil || ctx.Err() != nil {
				return err
			}
		}
		if r.Expect != nil {
			if err := a.retry(ctx, "checking the slots' records failed; retrying", func(e *zerolog.Event) *zerolog.Event { return e },
				func() error { return a.slotsKept(ctx) }); err != nil || ctx.Err() != nil {
				return err
			}
		}
	}
	// next is a TRUNCATE read while filling a batch: it starts the next
	// one, alone, so that the rows before it are in Redis first.
	var next *binlog.Txn
	for {
		b.reset()
		if next != nil {
			if err := a.add(b, next, stored); err != nil {
				return err
			}
			next = nil
		} else {
			select {
			case <-ctx.Done():
				return nil
			case <-idle.C:
				if a.cs != nil {
					if err := a.watchSlots(ctx, r.Fence, expect); err != nil {
						return err
					}
				}
				if len(in) == 0 {
					a.m.lag.Set(0) // nothing queued: caught up
					if err := a.verify(ctx, guard, expect); err != nil {
						return err
					}
				}
				continue
			case t, ok := <-in:
				if !ok {
					return nil
				}
				if err := a.add(b, t, stored); err != nil {
					return err
				}
			}
		}
		waiting := false
	fill:
		for b.rows < a.cfg.BatchChanges && b.bytes < a.cfg.BatchBytes && b.txns[0].Truncated == "" {
			var t *binlog.Txn
			var ok bool
			select {
			case t, ok = <-in:
			default:
				if !waiting {
					if c := b.txns[len(b.txns)-1].Commit; c.IsZero() || time.Since(c)+r.ClockOffset < catchUpAge {
						break fill // live (or not known): send what there is
					}
					waiting = true
					fillWait.Reset(catchUpWait)
				}
				select {
				case t, ok = <-in:
				case <-fillWait.C:
					break fill
				case <-ctx.Done():
					return nil
				}
			}
			if !ok {
				break fill
			}
			if t.Truncated != "" {
				next = t
				break fill
			}
			if err := a.add(b, t, stored); err != nil {
				return err
			}
		}
		if waiting {
			fillWait.Stop() // no stale tick after Stop since Go 1.23
		}
		if tbl := b.txns[0].Truncated; tbl != "" {
			if done, err := a.truncateRetrying(ctx, tbl, r.Fence); err != nil || !done {
				return err
			}
		}
		if err := a.apply(ctx, b, guard, expect, stored); err != nil || ctx.Err() != nil {
			return err // nil when ctx is done: the batch may not be applied
		}
		if b.cp != nil && guard != guardCheckpoint && a.cs != nil {
			fields := func(e *zerolog.Event) *zerolog.Event { return e }
			if err := a.retry(ctx, "deleting the slots' snapshot journals failed; retrying", fields, func() error { return a.dropSlotJournals(ctx) }); err != nil {
				return err
			}
		}
		if b.cp != nil {
			guard, expect = guardCheckpoint, b.cpVersion()
			stored = b.cp.Pos.String()
		} else if guard == guardFirst {
			guard = guardJournal
		}
	}
}

// add appends the ops of one transaction to the batch; stored is the
// checkpoint in Redis, named by a rule error: nothing after it is applied
// (the batch so far included).
func (a *Applier) add(b *batch, t *binlog.Txn, stored string) error {
	ver, err := t.Pos.Version()
	if err != nil {
		return err
	}
	var vs any = strconv.FormatUint(ver, 10) // boxed once for every op
	for i := range t.Changes {
		ch := &t.Changes[i]
		brs, err := a.rulesFor(ch.Table)
		if err != nil {
			return fmt.Errorf("%w: %v (in the transaction ending at %s); nothing after the stored checkpoint %s was applied: fix the rules and restart, the daemon resumes from it", ErrRule, err, t.Pos, stored)
		}
		for _, br := range brs {
			if br.applied == 0 {
				b.rules = append(b.rules, br)
			}
			v := vs
			if !br.versioned {
				v = nil
			}
			if n := b.add(br, ch, v); n > 0 {
				a.m.nullKeys.Add(float64(n))
			}
		}
	}
	if t.Snapshot != nil {
		b.progress(t.Snapshot, a.rules)
	}
	b.txns = append(b.txns, t)
	b.rows += len(t.Changes)
	b.bytes += t.Bytes
	return nil
}

func (a *Applier) rulesFor(t *binlog.Table) ([]*boundRule, error) {
	if brs, ok := a.bound[t]; ok {
		return brs, nil
	}
	if len(a.bound) > 10_000 { // tables of past connections and snapshots
		clear(a.bound)
	}
	var brs []*boundRule
	for _, r := range a.rules.byTable[strings.ToLower(t.FullName())] {
		br, err := r.bind(t)
		if err != nil {
			return nil, err
		}
		br.counter = a.m.rows.WithLabelValues(t.FullName(), r.name)
		brs = append(brs, br)
	}
	a.bound[t] = brs
	return brs, nil
}

// verify returns the error the next batch would get for what guard and
// expect say must be in Redis (see Run), so that it is noticed while the
// binlog is idle too: what depends on the checkpoint (a rebuild waiting
// for it) would otherwise wait for the next row change, which may never
// come. A failing Redis call is no finding.
func (a *Applier) verify(ctx context.Context, guard, expect string) error {
	switch guard {
	case guardCheckpoint:
		stored, err := a.rdb.HGet(ctx, a.ks.Checkpoint(), "version").Result()
		switch {
		case errors.Is(err, redis.Nil):
			return a.refused(ErrRedisReset, "checkpoint missing")
		case err != nil:
			return nil
		}
		if r := compareCheckpoint(stored, expect); r != "" {
			return a.refusal(r)
		}
	case guardJournal:
		n, err := a.rdb.Exists(ctx, a.ks.Snapshot()).Result()
		if err == nil && n == 0 {
			return a.refused(ErrRedisReset, "snapshot journal missing")
		}
	}
	return nil
}

// refused counts a refusal (one of refusals) and wraps err with what Redis
// said.
func (a *Applier) refused(err error, detail string) error {
	for _, r := range refusals {
		if r.err == err {
			a.m.errors.WithLabelValues(r.kind).Inc()
		}
	}
	return fmt.Errorf("%w: %s", err, detail)
}

// refusal is the refusal (counted, see refused) that the apply script's
// answer text is, or nil for any other answer.
func (a *Applier) refusal(text string) error {
	for _, r := range refusals {
		if msg, ok := strings.CutPrefix(text, r.prefix); ok {
			return a.refused(r.err, msg)
		}
	}
	return nil
}

// isRefusal reports whether err is one of refusals' errors (already
// counted).
func isRefusal(err error) bool {
	for _, r := range refusals {
		if errors.Is(err, r.err) {
			return true
		}
	}
	return false
}

// refusals are the apply script's answers that no retry can cure, by error
// prefix, with their kind in cachesync_sink_errors_total.
var refusals = []struct {
	prefix, kind string
	err          error
}{
	{"CSRESET ", "reset", ErrRedisReset},
	{"CSREWIND ", "rewind", ErrRewind},
	{"CSFENCED ", "fenced", ErrFenced},
	{"CSCONFLICT ", "conflict", ErrConflict},
}

// Guards of a batch: what must exist in Redis, else it lost its data
// (ARGV[1] of apply.lua).
const (
	guardCheckpoint = "1" // the checkpoint
	guardJournal    = "J" // no checkpoint yet: the snapshot journal
	guardFirst      = "0" // nothing: first batch without a checkpoint
)

// apply runs the batch's script until it succeeds or is refused; stored
// is the checkpoint before it, for errors.
func (a *Applier) apply(ctx context.Context, b *batch, guard, expect, stored string) error {
	b.finish(guard, expect, a.lastSeq.Load(), a.cfg.Channel, a.cfg.TombstoneTTL.Milliseconds())
	if a.cs != nil {
		b.markSlots(a.cs.unmarked(b))
	}
	fields := func(e *zerolog.Event) *zerolog.Event { return e.Int("txns", len(b.txns)).Int("rows", b.rows) }
	return a.retry(ctx, "apply to redis failed; retrying", fields, func() error {
		// A call in flight is finished even when ctx is cancelled: shutdown
		// waits for it rather than leave its outcome unknown.
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		start := time.Now()
		seq, err := a.call(callCtx, b)
		cancel()
		if err == nil {
			a.done(b, seq, time.Since(start))
			return nil
		}
		if isRefusal(err) {
			a.healthy.Store(true) // Redis answers; the caller decides
			return backoff.Permanent(err)
		}
		if err := a.refusal(err.Error()); err != nil {
			a.healthy.Store(true)
			return backoff.Permanent(err)
		}
		if a.failure(err) {
			return backoff.Permanent(fmt.Errorf("%w: %v%s; nothing after the stored checkpoint %s counts as applied: fix the cause and restart, the daemon replays from there", ErrScript, err, a.culprit(b, err), stored))
		}
		return err
	})
}

// retry calls op until it returns nil or an error wrapped in
// backoff.Permanent (returned unwrapped), waiting out the back-off after
// any other error and logging it as msg with fields. When ctx is done
// first it returns nil: the batch is not applied, and is replayed from the
// checkpoint at the next start.
func (a *Applier) retry(ctx context.Context, msg string, fields func(*zerolog.Event) *zerolog.Event, op func() error) error {
	_, err := backoff.Retry(ctx, func() (struct{}, error) { return struct{}{}, op() },
		backoff.WithBackOff(a.newBackOff()), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			a.m.retries.Inc()
			fields(a.log.Error().Err(err)).Dur("retry_in", wait).Msg(msg)
		}))
	if ctx.Err() != nil && errors.Is(err, context.Cause(ctx)) {
		return nil
	}
	return err
}

// failure notes a Redis call that failed without a refusal: the applier is
// unhealthy and the error counted. fatal: no retry cures it.
func (a *Applier) failure(err error) (fatal bool) {
	a.healthy.Store(false)
	a.m.errors.WithLabelValues(errorKind(err)).Inc()
	return deterministic(err)
}

// DiscardUnfinishedSnapshot deletes the keys (and their versions) that a
// snapshot which did not reach its checkpoint wrote, as recorded in the
// snapshot journal (apply.lua adds them while no checkpoint exists), then
// the journal; it returns how many keys it deleted.
// Call it before a snapshot starts: the new snapshot writes only the rows
// that exist now, so without it a row deleted (or moved out of a member
// set) since the unfinished snapshot would keep its key (or membership)
// forever. Interrupted, it is simply called again.
func (a *Applier) DiscardUnfinishedSnapshot(ctx context.Context) (int, error) {
	journal := a.ks.Snapshot()
	n := 0
	var cursor uint64
	for {
		keys, next, err := a.rdb.SScan(ctx, journal, cursor, "", 1000).Result()
		if err != nil {
			return n, fmt.Errorf("read snapshot journal: %w", err)
		}
		if len(keys) > 0 {
			_, err := a.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys { // one key per DEL: Cluster slots
					if k != "" { // "" marks the journal's existence
						p.Del(ctx, k)
						p.Del(ctx, a.ks.Version(k))
						n++
					}
				}
				return nil
			})
			if err != nil {
				return n, fmt.Errorf("delete keys of an unfinished snapshot: %w", err)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if a.cs != nil { // the journals of the other slots
		err := a.slotJournals(ctx, func(journal string) error {
			iter := a.rdb.SScan(ctx, journal, 0, "", 1000).Iterator()
			for iter.Next(ctx) {
				if k := iter.Val(); k != "" { // k and its version: journal's slot
					if err := a.rdb.Del(ctx, k, a.ks.Version(k)).Err(); err != nil {
						return err
					}
					n++
				}
			}
			if err := iter.Err(); err != nil {
				return err
			}
			return a.rdb.Del(ctx, journal).Err()
		})
		if err != nil {
			return n, fmt.Errorf("delete keys of an unfinished snapshot: %w", err)
		}
	}
	if err := a.rdb.Del(ctx, journal).Err(); err != nil {
		return n, fmt.Errorf("delete snapshot journal: %w", err)
	}
	return n, nil
}

// call runs the batch once: its script, and with b.direct the writes
// beside it (applyDirect). It returns the seq the script published.
func (a *Applier) call(ctx context.Context, b *batch) (int64, error) {
	if a.cs != nil {
		return a.applySlots(ctx, b)
	}
	if !b.direct {
		return a.script.Run(ctx, a.rdb, b.keys, b.args...).Int64()
	}
	return a.applyDirect(ctx, b)
}

// applyDirect sends the batch's last writes as plain MSET, DEL and HSET
// commands with the script in one MULTI/EXEC, which Redis runs whole as
// it runs a script, so readers still never see part of a batch. Inside
// it the script's refusals would come too late (a refused script does
// not undo the commands beside it), so the checks are made first, on the
// checkpoint and the lease read under WATCH: if either changes before
// EXEC (another writer, a restart, a renewal of the lease), nothing runs
// and the next try reads them again. The script goes by its SHA, loaded
// first if Redis lacks it (an EVALSHA answered NOSCRIPT inside EXEC would
// not stop the commands beside it; a SCRIPT FLUSH between the two is
// retried like any failed call, and the retry applies the batch whole).
// Two round trips: WATCH goes with the reads, MULTI…EXEC follows.
func (a *Applier) applyDirect(ctx context.Context, b *batch) (int64, error) {
	cp := a.ks.Checkpoint()
	for {
		var seq int64
		err := a.rdb.Watch(ctx, func(tx *redis.Tx) error {
			if err := checkDirect(ctx, tx, cp, b, a.script); err != nil {
				// EXEC will not run: release the WATCH sent beside the
				// reads (Tx.Close releases only its own).
				if uerr := tx.Unwatch(ctx).Err(); uerr != nil {
					return errors.Join(err, uerr)
				}
				return err
			}
			if a.checked != nil {
				a.checked()
			}
			cmds, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				// The script first: a key's earlier ops in it (see
				// batch.settle) come before its last write. No reader
				// sees the message before the writes: EXEC runs whole.
				p.EvalSha(ctx, a.script.Hash(), b.keys, b.args...)
				if len(b.mset) > 0 {
					p.MSet(ctx, b.mset...)
				}
				if len(b.dels) > 0 {
					p.Del(ctx, b.dels...)
				}
				for _, h := range b.hsets {
					p.Del(ctx, h.key)
					if len(h.fields) > 0 {
						p.HSet(ctx, h.key, h.fields...)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			seq, err = cmds[0].(*redis.Cmd).Int64()
			return err
		})
		if !errors.Is(err, redis.TxFailedErr) {
			return seq, err
		}
	}
}

// checkDirect watches the checkpoint and the lease and makes apply.lua's
// checks for a batch with a checkpoint (guard "1") in one round trip,
// answering as the script would, and loads the script if Redis lacks it.
func checkDirect(ctx context.Context, tx *redis.Tx, cp string, b *batch, script *redis.Script) error {
	expect, fence := b.args[10].(string), b.args[11].(string)
	var stored, holder *redis.StringCmd
	var loaded *redis.BoolSliceCmd
	_, err := tx.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Do(ctx, "WATCH", cp, b.fence.Key)
		stored = p.HGet(ctx, cp, "version")
		if fence != "" {
			holder = p.Get(ctx, b.fence.Key)
		}
		loaded = script.Exists(ctx, p)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	if ok := loaded.Val(); len(ok) != 1 || !ok[0] {
		if err := script.Load(ctx, tx).Err(); err != nil {
			return err
		}
	}
	v, err := stored.Result()
	if errors.Is(err, redis.Nil) {
		return errors.New("CSRESET checkpoint missing: Redis lost its data")
	}
	moved := compareCheckpoint(v, expect)
	if strings.HasPrefix(moved, "CSREWIND ") { // the script's order: rewind, fence, conflict
		return errors.New(moved)
	}
	if holder != nil {
		if h := holder.Val(); h != fence {
			return fmt.Errorf("CSFENCED lease %s is held by %q, not %q", b.fence.Key, h, fence)
		}
	}
	if moved != "" {
		return errors.New(moved)
	}
	return nil
}

// compareCheckpoint compares the stored checkpoint version with the one
// this writer expects, as apply.lua does: "" when equal, else its answer,
// CSREWIND (older: Redis went back in time) or CSCONFLICT (newer: another
// writer moved it).
func compareCheckpoint(stored, expect string) string {
	if stored == expect {
		return ""
	}
	s, _ := strconv.ParseUint(stored, 10, 64)
	e, _ := strconv.ParseUint(expect, 10, 64)
	if s < e {
		return "CSREWIND checkpoint " + stored + " is older than " + expect + ", which this writer applied"
	}
	return "CSCONFLICT checkpoint " + stored + " is newer than " + expect + ": another writer moved it"
}

func (a *Applier) done(b *batch, seq int64, took time.Duration) {
	a.healthy.Store(true)
	now := time.Now()
	a.m.batches.Inc()
	a.m.scriptSeconds.Observe(took.Seconds())
	a.m.txns.Add(float64(len(b.txns)))
	for _, t := range b.txns {
		t.Release() // its bytes may be read ahead again
		a.m.latency.Observe(now.Sub(t.Commit).Seconds())
		if t.Snapshot != nil && t.Snapshot.Done {
			a.snapDone.Add(1)
		}
	}
	for _, br := range b.rules {
		br.counter.Add(float64(br.applied))
		br.applied = 0
	}
	if seq > 0 {
		a.lastSeq.Store(seq)
		a.m.published.Inc()
		a.m.seq.Set(float64(seq))
	}
	last := b.txns[len(b.txns)-1]
	a.m.lag.Set(max(0, now.Sub(last.Commit).Seconds()))
	if t := b.cp; t != nil {
		ver, _ := t.Pos.Version() // checked when the transaction was added
		a.applied.Store(&Checkpoint{Pos: t.Pos, Version: ver, GTID: t.GTID, Commit: t.Commit})
		a.m.cpFile.Set(float64(ver >> 32))
		a.m.cpOffset.Set(float64(ver & 0xffffffff))
	}
}

// deterministic reports whether Redis answered err to the script for a
// reason that sending it again cannot cure: a key of the wrong type (the
// script's checks), a script or command error, missing permissions. Not:
// OOM, BUSY, LOADING, READONLY (a failover), a lost connection, a timeout.
func deterministic(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	switch {
	case strings.HasPrefix(msg, "ERR max number of clients"):
		return false
	case strings.HasPrefix(msg, "WRONGTYPE "), strings.HasPrefix(msg, "ERR "),
		strings.HasPrefix(msg, "NOPERM "), strings.HasPrefix(msg, "NOAUTH "), strings.HasPrefix(msg, "WRONGPASS "):
		return true
	}
	return false
}

// culprit names what a deterministic error is about: the rules of the batch
// that write the key a WRONGTYPE names, else every rule of the batch, and
// the transactions' span.
func (a *Applier) culprit(b *batch, err error) string {
	var names []string
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "WRONGTYPE member rule: "); ok {
		if i := strings.LastIndex(rest, " holds a "); i > 0 {
			key := rest[:i]
			for _, br := range b.rules {
				if br.writes(key) {
					names = append(names, br.name)
				}
			}
		}
	}
	if len(names) == 0 {
		for _, br := range b.rules {
			names = append(names, br.name)
		}
	}
	span := ""
	if n := len(b.txns); n > 0 {
		span = fmt.Sprintf(", transactions ending at %s..%s", b.txns[0].Pos, b.txns[n-1].Pos)
	}
	return fmt.Sprintf(" (rules %s%s)", strings.Join(names, ", "), span)
}

func errorKind(err error) string {
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "WRONGTYPE"):
		return "wrongtype"
	case strings.HasPrefix(msg, "OOM"):
		return "oom"
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "EOF"), strings.Contains(msg, "i/o timeout"), strings.Contains(msg, "broken pipe"), strings.Contains(msg, "reset by peer"):
		return "connection"
	}
	return "other"
}
