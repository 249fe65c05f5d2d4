package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/prometheus/client_golang/prometheus"
)

// The snapshot runs beside the stream, one short consistent read per chunk
// of rows in key order (binlog.ReadChunk). Each chunk is the state of its
// rows at the binlog position of its read (exact: the server reports it,
// or the read takes it under a brief lock). merge puts the chunk into the
// stream there: before the first transaction that ends after it. When the
// stream already forwarded transactions past that position (it is not
// behind the read), the chunk goes in at once, without the rows those
// transactions changed: the stream already applied their newer state
// (DBLog's watermark window, with the window known from positions). The
// chunk's progress is applied with its rows and the checkpoint, so a
// restart resumes after the last chunk in Redis.

// snapshotKeys reads the key columns of the pending tables, retrying
// until ctx is done (then nil).
func (p *Pipeline) snapshotKeys(ctx context.Context, pending map[string]string) map[string][]string {
	keys := make(map[string][]string, len(pending))
	for table := range pending {
		err := retry(ctx, func() (err error) {
			keys[table], err = binlog.KeyColumns(ctx, p.db, table)
			if err != nil && ctx.Err() == nil {
				p.log.Warn().Err(err).Str("table", table).Msg("snapshot: reading the table's key; retrying")
			}
			return err
		})
		if err != nil {
			return nil
		}
		if keys[table] == nil {
			p.log.Warn().Str("table", table).Msg("snapshot: the table has no primary or NOT NULL unique key: reading it whole, in one chunk")
		}
	}
	return keys
}

// snapshot reads the pending tables (table -> key to read after, ""
// from the start) chunk by chunk into out, until done or ctx is done. A
// failed read is retried with back-off.
func (p *Pipeline) snapshot(ctx context.Context, pending map[string]string, keys map[string][]string, budget *binlog.Budget, out chan<- *binlog.Txn) {
	tables := make([]string, 0, len(pending))
	for t := range pending {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	for _, table := range tables {
		t0, rows, after := time.Now(), 0, pending[table]
		for {
			var c *binlog.Txn
			err := retry(ctx, func() (err error) {
				c, err = binlog.ReadChunk(ctx, p.db, table, keys[table], after, p.chunk)
				if err != nil && ctx.Err() == nil {
					p.log.Warn().Err(err).Str("table", table).Msg("snapshot: reading a chunk; retrying")
				}
				return err
			})
			if err != nil {
				return // ctx is done
			}
			n, done := len(c.Changes), c.Snapshot.Done // c is merge's once sent
			after = c.Snapshot.After
			if budget.Acquire(ctx, c) != nil { // given back by the sink, or by merge (see run)
				return
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
			if rows += n; done {
				break
			}
		}
		p.log.Info().Str("table", table).Int("rows", rows).Dur("took", time.Since(t0)).Msg("snapshot: table read")
	}
}

// merger forwards the stream to the sink with the snapshot's chunks in
// their place (see above).
type merger struct {
	m    snapshotMetrics
	src  *binlog.Source
	out  chan<- *binlog.Txn
	keys map[string][]string // pending table -> key columns (nil: all)
	// changed: per pending table, the key (keyString) of every row a
	// forwarded transaction changed -> its state after the last one.
	changed map[string]map[string]image
	idx     map[*binlog.Table][]int // key column indexes in a stream table
	last    binlog.Position         // end of the last complete transaction forwarded
	lastV   uint64
	split   bool // the last forwarded transaction was a piece of a split one
	// truncV: per pending table, the version of the last TRUNCATE of it
	// forwarded: a chunk read before it holds rows that are gone.
	truncV map[string]uint64
}

// The stream starts at start: everything up to there is in Redis.
func merge(ctx context.Context, sm snapshotMetrics, src *binlog.Source, keys map[string][]string, start binlog.Position, first *binlog.Txn, raw, chunks <-chan *binlog.Txn, out chan<- *binlog.Txn) {
	m := &merger{m: sm, src: src, out: out, keys: keys, changed: map[string]map[string]image{}, idx: map[*binlog.Table][]int{},
		last: start, lastV: version(start), truncV: map[string]uint64{}}
	for t := range keys {
		m.changed[t] = map[string]image{}
	}
	m.run(ctx, first, raw, chunks)
}

func (m *merger) send(ctx context.Context, t *binlog.Txn) bool {
	select {
	case m.out <- t:
		return true
	case <-ctx.Done():
		return false
	}
}

func (m *merger) run(ctx context.Context, first *binlog.Txn, raw, chunks <-chan *binlog.Txn) {
	if first != nil {
		if !m.send(ctx, first) {
			return
		}
		m.last, m.lastV = first.Pos, version(first.Pos)
	}
	var held *binlog.Txn
	var at uint64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		in := chunks
		if held != nil {
			in = nil // one chunk at a time
		}
		select {
		case <-ctx.Done():
			return
		case t, ok := <-raw:
			if !ok {
				return
			}
			if held != nil && !m.split && version(t.Pos) > at {
				if !m.send(ctx, m.place(held, at)) {
					return
				}
				held = nil
			}
			m.note(t)
			if !m.send(ctx, t) {
				return
			}
		case c, ok := <-in:
			if !ok {
				chunks = nil
				continue
			}
			held, at = c, version(c.Pos)
		case <-tick.C:
		}
		if held == nil || m.split {
			continue
		}
		// The stream is past the chunk, or idle at or after it: every
		// transaction up to the source's position was put on raw before
		// it moved, so raw empty means they were all forwarded.
		if m.lastV >= at || (m.src.Reached() >= at && len(raw) == 0) {
			if !m.send(ctx, m.place(held, at)) {
				return
			}
			held = nil
			continue
		}
		// A chunk waiting for the stream gives its read-ahead back: the
		// stream must be able to read up to it.
		held.Release()
	}
}

// image is a row's state after the last forwarded transaction that
// changed it: row nil when it no longer exists.
type image struct {
	v     uint64
	table *binlog.Table
	row   []any
}

// note records what a forwarded transaction changed in pending tables.
func (m *merger) note(t *binlog.Txn) {
	m.split = t.Partial
	v := version(t.Pos)
	if !t.Partial {
		m.last, m.lastV = t.Pos, v
	}
	if seen, ok := m.changed[t.Truncated]; ok { // the sink deletes the table's keys
		clear(seen)
		m.truncV[t.Truncated] = v
	}
	for i := range t.Changes {
		ch := &t.Changes[i]
		seen, ok := m.changed[strings.ToLower(ch.Table.FullName())]
		if !ok {
			continue
		}
		idx := m.keyIndex(ch.Table)
		if ch.Before != nil { // gone, unless the after-image has its key
			seen[keyString(ch.Before, idx)] = image{v: v}
		}
		if ch.After != nil {
			seen[keyString(ch.After, idx)] = image{v: v, table: ch.Table, row: ch.After}
		}
	}
}

// place returns chunk c (read at version at) ready to forward now. When
// nothing past it was forwarded, it goes as it is. Else it goes at the
// position of the last forwarded transaction, with the rows changed since
// in their state after that one (left out when gone): the stream applied
// their changes to the chunk's state, but a change that kept a row in a
// member set re-adds nothing. It forgets the changes the chunk made
// irrelevant (later chunks are read later).
func (m *merger) place(c *binlog.Txn, at uint64) *binlog.Txn {
	table := c.Snapshot.Table
	seen := m.changed[table]
	if m.lastV > at {
		c.Pos = m.last // the checkpoint never goes back
	}
	if m.lastV > at && len(c.Changes) > 0 {
		idx := m.keyIndex(c.Changes[0].Table)
		kept := c.Changes[:0]
		newer := 0
		truncated := m.truncV[table] > at // every row before it is gone
		for _, ch := range c.Changes {
			img, ok := seen[keyString(ch.After, idx)]
			switch {
			case (!ok || img.v <= at) && !truncated:
				kept = append(kept, ch)
			case !ok || img.v <= at:
				newer++
			case img.row != nil:
				kept = append(kept, binlog.Change{Table: img.table, Op: binlog.Insert, After: img.row})
				newer++
			default:
				newer++
			}
		}
		m.m.superseded.Add(float64(newer))
		c.Changes = kept
	}
	m.m.chunks.Inc()
	m.m.rows.Add(float64(len(c.Changes)))
	for k, img := range seen {
		if img.v <= at {
			delete(seen, k)
		}
	}
	if c.Snapshot.Done {
		delete(m.changed, table)
		delete(m.truncV, table)
	}
	return c
}

// keyIndex returns the indexes of t's key columns (all when it has none).
func (m *merger) keyIndex(t *binlog.Table) []int {
	if idx, ok := m.idx[t]; ok {
		return idx
	}
	var idx []int
	if key := m.keys[strings.ToLower(t.FullName())]; key != nil {
		for _, k := range key {
			if i, ok := t.Column(k); ok {
				idx = append(idx, i)
			}
		}
	} else {
		for i := range t.Columns {
			idx = append(idx, i)
		}
	}
	if len(m.idx) > 10_000 { // tables of past connections
		clear(m.idx)
	}
	m.idx[t] = idx
	return idx
}

// keyString renders the values at idx of row as one comparable string;
// snapshot and stream give the same Go values for the same column.
func keyString(row []any, idx []int) string {
	var b []byte
	for _, i := range idx {
		switch v := row[i].(type) {
		case nil:
			b = append(b, 0)
		case []byte:
			b = fmt.Appendf(b, "%d:%s", len(v), v)
		case string:
			b = fmt.Appendf(b, "%d:%s", len(v), v)
		default:
			s := fmt.Sprint(v)
			b = fmt.Appendf(b, "%d:%s", len(s), s)
		}
	}
	return string(b)
}

func version(p binlog.Position) uint64 {
	v, _ := p.Version() // the sink refuses a position without one
	return v
}

// snapshotMetrics count what the snapshot put into the stream.
type snapshotMetrics struct {
	chunks, rows, superseded prometheus.Counter
}

func newSnapshotMetrics(reg prometheus.Registerer) snapshotMetrics {
	m := snapshotMetrics{
		chunks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "snapshot_chunks_total",
			Help: "Snapshot chunks put into the stream."}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "snapshot_rows_total",
			Help: "Snapshot rows put into the stream."}),
		superseded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Name: "snapshot_rows_superseded_total",
			Help: "Snapshot rows the stream changed after the chunk was read: put in with their newer state, or left out when deleted."}),
	}
	if reg != nil {
		reg.MustRegister(m.chunks, m.rows, m.superseded)
	}
	return m
}

// errSnapshotRequested ends a run whose snapshot must take in tables that
// were requested (cachesync snapshot -table) since it began.
var errSnapshotRequested = errors.New("snapshot requested")

// watchRequests reports true when a snapshot of a table was requested
// (cachesync snapshot -table), checking every 2 s until ctx is done
// (false). The next run begins it; the chunks of this one leave the
// request in place.
func (p *Pipeline) watchRequests(ctx context.Context) bool {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		_, tables, err := p.applier.SnapshotProgress(ctx)
		if err != nil {
			continue // the sink notices a Redis that is gone
		}
		if len(tables) > 0 {
			p.log.Info().Strs("tables", tables).Msg("snapshot requested")
			return true
		}
	}
}
