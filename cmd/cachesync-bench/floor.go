package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/redis/go-redis/v9"
)

// floorPositionKey is where the floor saves its binlog position.
const floorPositionKey = "floor:position"

// syncer starts a bare go-mysql BinlogSyncer at start and calls fn with
// each event until the one that ends at end; fn may stop it early with an
// error.
func (e *env) syncer(ctx context.Context, serverID uint32, start, end binlog.Position, fn func(*replication.BinlogEvent, *replication.BinlogSyncer) error) error {
	return e.syncerMode(ctx, serverID, false, start, end, fn)
}

// syncerMode is syncer, in go-mysql's raw mode (events unparsed) if raw.
func (e *env) syncerMode(ctx context.Context, serverID uint32, raw bool, start, end binlog.Position, fn func(*replication.BinlogEvent, *replication.BinlogSyncer) error) error {
	host, port := splitAddr(e.my.Addr())
	s := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: serverID, Flavor: "mariadb", Host: host, Port: port, User: "root",
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		RawModeEnabled: raw,
	})
	defer s.Close()
	st, err := s.StartSync(mysql.Position{Name: start.File, Pos: start.Pos})
	if err != nil {
		return err
	}
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			return err
		}
		if err := fn(ev, s); err != nil {
			return err
		}
		if ev.Header.LogPos >= end.Pos && s.GetNextPosition().Name == end.File {
			return nil
		}
	}
}

// rowChanges is how many row changes a rows event holds: an UPDATE's rows
// come in before/after pairs.
func rowChanges(re *replication.RowsEvent) int {
	if re.Type() == replication.EnumRowsEventTypeUpdate {
		return len(re.Rows) / 2
	}
	return len(re.Rows)
}

// rawParse reads w's binlog range with a bare BinlogSyncer, fully decoding
// every row event, and returns the row changes it saw.
func (e *env) rawParse(ctx context.Context, w *workload, win *window) (int, error) {
	rows := 0
	win.begin()
	err := e.syncer(ctx, 9001, w.start, w.end, func(ev *replication.BinlogEvent, _ *replication.BinlogSyncer) error {
		if re, ok := ev.Event.(*replication.RowsEvent); ok {
			rows += rowChanges(re)
		}
		return nil
	})
	win.finish()
	return rows, err
}

// wire reads w's binlog range in go-mysql's raw mode, parsing nothing but
// event headers: what the server's dump thread and the socket deliver,
// the ceiling of any client. It returns the workload's row changes.
func (e *env) wire(ctx context.Context, w *workload, win *window) (int, error) {
	win.begin()
	err := e.syncerMode(ctx, 9002, true, w.start, w.end, func(*replication.BinlogEvent, *replication.BinlogSyncer) error { return nil })
	win.finish()
	return w.rows, err
}

// floorBatch is one pipelined write of the floor: its commands and the
// position after its last transaction.
type floorBatch struct {
	pipe redis.Pipeliner
	pos  string
}

// floor replays w's binlog range the way a plain binlog → Redis syncer
// such as go-mysql-transfer does: the bare parser, each row's after-image
// as a JSON object of all its columns (a map[string]any through
// encoding/json, like the peer), a plain SET of the rewrite rule's key (DEL
// for a deleted row), pipelined and sent once at least batch rows are
// queued at a transaction's end, and the position saved as a plain SET at
// most every 3 s. No version guard, no atomic apply, no checkpoint, no
// message: the cheapest syncer whose Redis ends up right when it has caught
// up. Parsing and sending overlap, as in the peer: one goroutine reads
// events and fills a pipeline, another sends them in order. It returns the
// row changes written.
func (e *env) floor(ctx context.Context, w *workload, win *window, batch int) (int, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out := make(chan floorBatch, 1)
	sent := make(chan struct{})
	win.begin()
	go func() { // the writer
		defer close(sent)
		saved := time.Now()
		for b := range out {
			if ctx.Err() != nil {
				continue // drain
			}
			if time.Since(saved) >= 3*time.Second {
				b.pipe.Set(ctx, floorPositionKey, b.pos, 0)
				saved = time.Now()
			}
			if _, err := b.pipe.Exec(ctx); err != nil {
				cancel(fmt.Errorf("floor: redis: %w", err))
			}
		}
	}()
	rows := 0
	names := map[uint64][]string{} // by table id, like the peer's rule cache
	pipe, pos := e.rdb.Pipeline(), ""
	send := func() error {
		select {
		case out <- floorBatch{pipe: pipe, pos: pos}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		pipe = e.rdb.Pipeline()
		return nil
	}
	err := e.syncer(ctx, 9002, w.start, w.end, func(ev *replication.BinlogEvent, s *replication.BinlogSyncer) error {
		switch x := ev.Event.(type) {
		case *replication.XIDEvent:
			pos = s.GetNextPosition().String()
			if pipe.Len() >= batch {
				return send()
			}
		case *replication.RowsEvent:
			if string(x.Table.Schema) != "bench" || string(x.Table.Table) != "t" {
				return nil
			}
			n, ok := names[x.TableID]
			if !ok {
				n = x.Table.ColumnNameString()
				names[x.TableID] = n
			}
			rows += rowChanges(x)
			return floorRows(ctx, pipe, x.Type(), x.Rows, n)
		}
		return nil
	})
	if err == nil && pipe.Len() > 0 {
		err = send()
	}
	close(out)
	<-sent
	win.finish()
	if err == nil {
		err = context.Cause(ctx)
	}
	return rows, err
}

// floorRows queues the SETs (or DELs) of one rows event of bench.t.
func floorRows(ctx context.Context, pipe redis.Pipeliner, t replication.EnumRowsEventType, rows [][]any, names []string) error {
	step, first, del := 1, 0, t == replication.EnumRowsEventTypeDelete
	if t == replication.EnumRowsEventTypeUpdate {
		step, first = 2, 1 // the after-images
	}
	for i := first; i < len(rows); i += step {
		row := rows[i]
		kv := make(map[string]any, len(names))
		for j, name := range names {
			kv[name] = row[j]
		}
		key := "tj:" + keyText(kv["id"])
		if del {
			pipe.Del(ctx, key)
			continue
		}
		v, err := json.Marshal(kv)
		if err != nil {
			return err
		}
		pipe.Set(ctx, key, v, 0)
	}
	return nil
}

// keyText renders a key column the way the peer's ToString does.
func keyText(v any) string {
	switch x := v.(type) {
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case string:
		return x
	}
	return fmt.Sprint(v)
}
