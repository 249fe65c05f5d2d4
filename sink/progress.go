package sink

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cachesync/cachesync/binlog"
)

// A snapshot runs beside the stream, a chunk at a time (see pipeline); its
// progress is a hash, field "schema.table", written by the same script
// call as the chunk's rows and the checkpoint, so a restart resumes after
// the last chunk in Redis:
//
//	"at:<key>"  read up to key (binlog.FormatKey; "at:" from the start)
//	"done"      every row is in Redis
//	"request"   requested (RequestSnapshot), to begin from the start
//
// and, field "rules:schema.table", the fingerprint of the table's rules
// (Rules.Fingerprint) its snapshot began with.
const (
	// ProgressDone is the progress of a table whose last chunk is in
	// Redis: every row of it is (the sale trusts its known-items set only
	// then).
	ProgressDone      = "done"
	progressRequested = "request"
)

// SnapshotProgress returns, for each table whose snapshot has begun or was
// requested and has not finished, the key to read after
// (binlog.FormatKey, "" from the start), and among them the tables
// requested (RequestSnapshot) and not yet begun; tables done or never
// begun are absent.
func (a *Applier) SnapshotProgress(ctx context.Context) (pending map[string]string, requested []string, err error) {
	h, err := a.rdb.HGetAll(ctx, a.ks.SnapshotProgress()).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read snapshot progress: %w", err)
	}
	pending = map[string]string{}
	for table, v := range h {
		if strings.HasPrefix(table, rulesField) {
			continue
		}
		if after, ok := strings.CutPrefix(v, "at:"); ok {
			pending[table] = after
		} else if v == progressRequested {
			pending[table] = ""
			requested = append(requested, table)
		}
	}
	return pending, requested, nil
}

// RulesChanged lists the stateful tables whose rules are not those their
// snapshot began with: a rule added or changed since, or a table never
// snapshotted. Their keys hold only what the stream changed after the
// change, so the leader snapshots them again when it starts.
func (a *Applier) RulesChanged(ctx context.Context) ([]string, error) {
	h, err := a.rdb.HGetAll(ctx, a.ks.SnapshotProgress()).Result()
	if err != nil {
		return nil, fmt.Errorf("read snapshot progress: %w", err)
	}
	var changed []string
	for _, table := range a.rules.Stateful() {
		if h[rulesField+table] != a.rules.Fingerprint(table) {
			changed = append(changed, table)
		}
	}
	return changed, nil
}

// rulesField prefixes the progress hash's fingerprint fields.
const rulesField = "rules:"

// SnapshotTablesDone counts the tables whose last chunk this applier has
// applied.
func (a *Applier) SnapshotTablesDone() int64 { return a.snapDone.Load() }

// progress adds the snapshot step of t to the batch: a table whose
// snapshot begins is set to its start, with its rules' fingerprint; a
// chunk's progress does not overwrite a request made meanwhile (op P).
func (b *batch) progress(s *binlog.SnapshotStep, rules *Rules) {
	set := func(op, table, v string) {
		b.op(op, table, v)
		b.keys = append(b.keys, b.ks.SnapshotProgress())
	}
	for _, table := range s.Start {
		set("HA", table, "at:")
		set("HA", rulesField+table, rules.Fingerprint(table))
	}
	if len(s.Start) > 0 { // a resync is over once its snapshot begins
		b.runOp("D", 1)
		b.keys = append(b.keys, b.ks.Resync(), b.ks.Resync())
	}
	switch {
	case s.Table == "":
	case s.Done:
		set("P", s.Table, ProgressDone)
	default:
		set("P", s.Table, "at:"+s.After)
	}
}

// RequestSnapshot asks the leader to snapshot table ("schema.table", a
// table of a stateful rule) again, from its first row: after a rule
// change, or to repair it. The leader notices within seconds.
func (a *Applier) RequestSnapshot(ctx context.Context, table string) error {
	table = strings.ToLower(table)
	if !slices.Contains(a.rules.Stateful(), table) {
		return fmt.Errorf("table %s: no rewrite, mirror or member rule reads it (stateful tables: %s)", table, strings.Join(a.rules.Stateful(), ", "))
	}
	if err := a.rdb.HSet(ctx, a.ks.SnapshotProgress(), table, progressRequested).Err(); err != nil {
		return fmt.Errorf("request snapshot of %s: %w", table, err)
	}
	return nil
}
