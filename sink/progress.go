package sink

import (
	"context"
	"fmt"
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
const progressDone = "done"

// SnapshotProgress returns, for each table whose snapshot has begun and
// not finished, the key to read after (binlog.FormatKey, "" from the
// start); tables done or never begun are absent.
func (a *Applier) SnapshotProgress(ctx context.Context) (map[string]string, error) {
	h, err := a.rdb.HGetAll(ctx, a.ks.SnapshotProgress()).Result()
	if err != nil {
		return nil, fmt.Errorf("read snapshot progress: %w", err)
	}
	pending := map[string]string{}
	for table, v := range h {
		if after, ok := strings.CutPrefix(v, "at:"); ok {
			pending[table] = after
		}
	}
	return pending, nil
}

// SnapshotTablesDone counts the tables whose last chunk this applier has
// applied.
func (a *Applier) SnapshotTablesDone() int64 { return a.snapDone.Load() }

// progress adds the snapshot step of t to the batch.
func (b *batch) progress(s *binlog.SnapshotStep) {
	set := func(table, v string) {
		b.args = append(b.args, "HA", table, v)
		b.keys = append(b.keys, b.ks.SnapshotProgress())
	}
	for _, table := range s.Start {
		set(table, "at:")
	}
	switch {
	case s.Table == "":
	case s.Done:
		set(s.Table, progressDone)
	default:
		set(s.Table, "at:"+s.After)
	}
}
