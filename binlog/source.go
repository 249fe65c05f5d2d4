package binlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Start is where a Source begins: a GTID set if GTID is set, else Pos.
type Start struct {
	Pos  Position
	GTID string
}

// String is the GTID set if there is one, else the position.
func (s Start) String() string {
	if s.GTID != "" {
		return "gtid " + s.GTID
	}
	return s.Pos.String()
}

// Source reads the binlog and emits transactions. Create one with
// NewSource; Run may be called again after it returned.
type Source struct {
	cfg     Config
	flavor  string
	watch   map[string]bool // "schema.table" (lower case) of ruled tables
	log     zerolog.Logger
	metrics *sourceMetrics
	up      atomic.Bool
	lastErr atomic.Pointer[error] // nil or the error that ended the last stream
	// reached is the version of the binlog position up to which every
	// transaction has been sent (0: unknown yet).
	reached atomic.Uint64
	budget  *Budget // read-ahead bound, set before Run
	// How the stream is decoded (see parse): unitBytes and
	// decodeWorkers(); tests cut every event into a unit of its own.
	unitBytes, workers int
}

// NewSource returns a Source for the given server flavor ("mysql" or
// "mariadb") that keeps row changes of the watched tables ("schema.table")
// and drops all others while decoding.
func NewSource(cfg Config, flavor string, watched []string, log zerolog.Logger, reg prometheus.Registerer) *Source {
	w := make(map[string]bool, len(watched))
	for _, t := range watched {
		w[strings.ToLower(t)] = true
	}
	return &Source{cfg: cfg, flavor: flavor, watch: w, log: log, metrics: newSourceMetrics(reg),
		unitBytes: unitBytes, workers: decodeWorkers()}
}

// Reached returns the version (Position.Version) of the binlog position up
// to which every transaction has been sent: the end of the last one, or
// the position an idle server's heartbeat names. 0 until known.
func (s *Source) Reached() uint64 { return s.reached.Load() }

// SetBudget makes Run take each transaction's bytes from b before sending
// it (nil: unbounded), and forgets Reached. Call it before each Run.
func (s *Source) SetBudget(b *Budget) {
	s.budget = b
	s.reached.Store(0) // before the run's merge looks: a new run may start further back
}

// Connected reports whether the source currently streams from the server.
func (s *Source) Connected() bool { return s.up.Load() }

// LastError returns the error that ended the last connection or attempt
// to connect — the one Run retries after, or the fatal one it returned —
// or nil if there was none since the current connection delivered its
// first event. Safe for concurrent use: /readyz and logs may show it
// while Connected is false.
func (s *Source) LastError() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Run streams transactions from start into out, in commit order, until ctx
// is done (it then returns nil) or an error that reconnecting cannot cure
// (wrapping ErrFatal): a purged start (also ErrPurged), a refused login
// or privilege, a binlog the server cannot send, a row that does not fit
// its table map. Server errors are told apart by number. Anything else
// (a lost connection, a server restarting) is retried with backoff,
// resuming after the last complete transaction sent on out; Connected is
// false and LastError says why meanwhile. Run never closes out.
func (s *Source) Run(ctx context.Context, start Start, out chan<- *Txn) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	s.reached.Store(0) // a new stream may start before the last one got
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		r := &reader{src: s, out: out, file: start.Pos.File}
		err := classify(r.stream(ctx, start), start)
		s.up.Store(false)
		if ctx.Err() != nil {
			return struct{}{}, nil
		}
		if err != nil {
			s.lastErr.Store(&err)
		}
		if errors.Is(err, ErrFatal) {
			return struct{}{}, backoff.Permanent(err)
		}
		if !r.resume.IsZero() {
			start = Start{Pos: r.resume}
		}
		if r.progressed {
			bo.Reset() // the next wait is the shortest again
		}
		return struct{}{}, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, wait time.Duration) {
		s.metrics.reconnects.Inc()
		s.log.Warn().Err(err).Stringer("resume", start.Pos).Dur("retry_in", wait).Msg("binlog stream lost; reconnecting")
	}))
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// reader holds the state of one connection's stream.
type reader struct {
	src        *Source
	out        chan<- *Txn
	file       string
	resume     Position // end of the last complete transaction sent
	progressed bool
	tables     map[uint64]*Table // table id -> watched table, nil entry = unwatched
	tableMaps  map[uint64][]byte // table id -> body of the table map event read last
	txn        *Txn
	inTxn      bool // inside BEGIN ... COMMIT/XID
	gtid       string
	commit     time.Time
	split      bool // current transaction was already partly sent
	// signedness of the table maps of the unit being handled, taken out
	// of them by its decoder (see decoder.takeSignedness).
	signedness map[*replication.TableMapEvent][]byte
}

func (r *reader) stream(ctx context.Context, start Start) error {
	s := r.src
	// Watchdog clock: the last time bytes came off the socket, or handle
	// returned (time blocked handing transactions on, while Redis is slow,
	// stops the syncer reading too, and is not silence).
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	// go-mysql does not reconnect: Run does, at a transaction boundary.
	// No ReadTimeout: go-mysql would set a socket deadline per packet
	// (~10% of CPU at full speed); the watchdog below does its job.
	cfg := s.cfg.syncerConfig(s.flavor, s.cfg.ServerID)
	cfg.HeartbeatPeriod = s.cfg.Heartbeat
	// Parsed events wait here for handle; the default (10240) would hold
	// ~80 MB of 8 KiB row events beyond the read-ahead budget.
	cfg.EventCacheCount = 64
	cfg.Dialer = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		return &touchConn{Conn: c, last: &last}, nil
	}
	// Events are parsed by decoders (see decoder and parse), on goroutines
	// of their own ahead of handle.
	cfg.RawModeEnabled = true
	syncer := replication.NewBinlogSyncer(cfg)
	defer syncer.Close()
	var (
		st  *replication.BinlogStreamer
		err error
	)
	if start.GTID != "" {
		set, perr := mysql.ParseGTIDSet(s.flavor, start.GTID)
		if perr != nil {
			return fmt.Errorf("%w: start gtid %q: %v", ErrFatal, start.GTID, perr)
		}
		st, err = syncer.StartSyncGTID(set)
	} else {
		st, err = syncer.StartSync(mysql.Position{Name: start.Pos.File, Pos: start.Pos.Pos})
	}
	if err != nil {
		return fmt.Errorf("start binlog dump at %v: %w", start, err)
	}
	r.tables = make(map[uint64]*Table)
	// Watchdog: the server sends a heartbeat every s.cfg.Heartbeat when
	// idle; 3 missed ones mean the connection is dead though TCP says not.
	// A large event arriving slowly keeps it alive (bytes, not events).
	var handling atomic.Bool
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		t := time.NewTicker(s.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case now := <-t.C:
				if !handling.Load() && now.Sub(time.Unix(0, last.Load())) > 3*s.cfg.Heartbeat {
					s.log.Warn().Dur("silent_for", now.Sub(time.Unix(0, last.Load()))).Msg("binlog connection silent; closing it")
					syncer.Close()
					return
				}
			}
		}
	}()
	units, stopParse := parse(ctx, st, func() *decoder { return newDecoder(s.parserOptions) }, s.workers, s.unitBytes)
	defer stopParse()
	first := true
	for {
		var u *unit
		select {
		case u = <-units:
		case <-ctx.Done():
			return ctx.Err()
		}
		for {
			var c chunk
			var more bool
			select {
			case c, more = <-u.chunks:
			case <-ctx.Done():
				return ctx.Err()
			}
			if !more {
				break
			}
			if first && len(c.evs) > 0 {
				s.lastErr.Store(nil)
				s.up.Store(true)
				first = false
			}
			handling.Store(true)
			r.signedness = c.signedness
			for _, ev := range c.evs {
				if err = r.handle(ctx, ev); err != nil {
					return err
				}
			}
			last.Store(time.Now().UnixNano())
			handling.Store(false)
			if c.err != nil {
				return c.err
			}
		}
	}
}

// parserOptions sets how a parser decodes events; see decoder.
func (s *Source) parserOptions(p *replication.BinlogParser) {
	p.SetFlavor(s.flavor)
	// TIMESTAMP values are rendered in UTC, as Snapshot reads them.
	p.SetTimestampStringLocation(time.UTC)
	// MySQL's binary JSON in its own key order and number forms
	// (mysqlJSONText adds its spacing).
	p.SetRenderJSONAsMySQLText(true)
	p.SetRowsEventDecodeFunc(func(e *replication.RowsEvent, data []byte) error {
		// Decode only the header of unwatched tables' row events. This
		// runs on the decoding workers, ahead of handle: it may only read
		// immutable state.
		pos, err := e.DecodeHeader(data)
		if err != nil {
			return err
		}
		if !s.watched(e.Table.Schema, e.Table.Table) {
			return nil
		}
		return e.DecodeData(pos, data)
	})
}

// A unit is a run of the stream's events, decoded by one of the decoding
// workers; units go to the reader in stream order. Decoding is most of the
// CPU per row and go-mysql does it on one goroutine: the units of a
// catch-up spread it over the cores.
type unit struct {
	raws []*replication.BinlogEvent // as the syncer delivered them (raw mode)
	// format is the format description event in force at the unit's
	// start, nil before the first; prime the table maps of the
	// transaction the unit starts inside of (a long statement is cut too:
	// its rows need them).
	// A worker parses both before the unit, and hands neither on.
	format *replication.BinlogEvent
	prime  []*replication.BinlogEvent

	// The worker sends the decoded events, then closes chunks.
	chunks chan chunk
}

// newUnit returns a unit with room for one chunk: most units are one.
func newUnit() *unit { return &unit{chunks: make(chan chunk, 1)} }

// chunk is a run of decoded events of a unit: all of it, or chunkBytes
// of it (a transaction payload's inner events go on as they are decoded,
// before the next are read).
type chunk struct {
	evs        []*replication.BinlogEvent
	signedness map[*replication.TableMapEvent][]byte
	err        error // the error that ends the stream: reading or decoding
}

// chunkBytes bounds the raw bytes of the events in one chunk.
const chunkBytes = 1 << 20

// Units are cut once they hold unitBytes of raw events (or the syncer has
// nothing more queued): enough to make a hand-off's cost small against
// the decoding, small enough that the units in flight hold little.
const unitBytes = 256 << 10

// decodeWorkers is how many goroutines decode: one per core, up to 4.
func decodeWorkers() int {
	return min(max(runtime.GOMAXPROCS(0), 1), 4)
}

// parse cuts st's raw events into units of about unitBytes, has workers
// goroutines decode them with decoders of newDecoder, and sends them on
// units in stream order, possibly still being decoded (read their
// chunks), until an error (in the last chunk sent) or stop. stop waits for
// every goroutine to end.
func parse(ctx context.Context, st *replication.BinlogStreamer, newDecoder func() *decoder, workers, unitBytes int) (units <-chan *unit, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	// The reader waits for the oldest unit; the next ones are decoded
	// meanwhile. Each holds its rows' values once decoded.
	out := make(chan *unit, 2*workers)
	work := make(chan *unit, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { decodeUnits(ctx, newDecoder(), work) })
	}
	send := func(u *unit) error {
		select {
		case work <- u:
		case <-ctx.Done():
			return ctx.Err()
		}
		return send2(ctx, out, u)
	}
	wg.Go(func() {
		defer close(work)
		var (
			u      *unit
			size   int
			queue  []*replication.BinlogEvent // raw events taken from the syncer
			format *replication.BinlogEvent
			// The table maps of the transaction read last, the last one
			// of each table id: a unit cut inside it needs them.
			maps = make(map[uint64]*replication.BinlogEvent)
		)
		flush := func() error {
			if u == nil {
				return nil
			}
			err := send(u)
			u, size = nil, 0
			return err
		}
		for {
			if len(queue) == 0 {
				if err := flush(); err != nil {
					return
				}
				raw, err := st.GetEvent(ctx)
				if err != nil {
					end := newUnit()
					end.chunks <- chunk{err: err}
					close(end.chunks)
					_ = send2(ctx, out, end)
					return
				}
				// At most cfg.EventCacheCount more, without waiting.
				queue = append(append(queue[:0], raw), st.DumpEvents()...)
			}
			raw := queue[0]
			queue = queue[1:]
			if u == nil {
				u = newUnit()
				u.format = format
				for _, m := range maps {
					u.prime = append(u.prime, m)
				}
			}
			u.raws = append(u.raws, raw)
			switch raw.Header.EventType {
			case replication.FORMAT_DESCRIPTION_EVENT:
				format = raw
				clear(maps)
			case replication.TABLE_MAP_EVENT:
				maps[tableID(raw)] = raw
			case replication.XID_EVENT, replication.QUERY_EVENT, replication.ROTATE_EVENT,
				replication.GTID_EVENT, replication.ANONYMOUS_GTID_EVENT, replication.GTID_TAGGED_LOG_EVENT,
				replication.MARIADB_GTID_EVENT, replication.TRANSACTION_PAYLOAD_EVENT:
				clear(maps) // no statement goes on past these
			}
			if size += int(raw.Header.EventSize); size >= unitBytes {
				if err := flush(); err != nil {
					return
				}
			}
		}
	})
	return out, func() { cancel(); wg.Wait() }
}

// tableID reads the table id of a raw table map event: 6 bytes after the
// header on every server since MySQL 5.1 (older ones wrote 4, and then
// flags: a key still, if a wider one).
func tableID(raw *replication.BinlogEvent) uint64 {
	b := raw.RawData
	if len(b) < replication.EventHeaderSize+6 {
		return 0
	}
	var id [8]byte
	copy(id[:], b[replication.EventHeaderSize:replication.EventHeaderSize+6])
	return binary.LittleEndian.Uint64(id[:])
}

// send2 sends u on out unless ctx ends first.
func send2(ctx context.Context, out chan<- *unit, u *unit) error {
	select {
	case out <- u:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// decodeUnits decodes the units of work with d until work is closed. Its
// units' events start where the previous unit it decoded may not have
// ended: it takes the unit's format and transaction's table maps first.
// Sending a chunk waits while the reader is busy with older units; the
// oldest unit's worker never waits on a younger one, as workers take
// units in order.
func decodeUnits(ctx context.Context, d *decoder, work <-chan *unit) {
	discard := func(*replication.BinlogEvent) error { return nil }
	send := func(u *unit, c chunk) error {
		select {
		case u.chunks <- c:
			return nil
		case <-ctx.Done(): // the reader is gone
			return ctx.Err()
		}
	}
	for u := range work {
		err := func() error {
			if u.format != nil && u.format != d.format {
				if err := d.decode(u.format, discard); err != nil {
					return err
				}
			}
			d.priming = true
			defer func() { d.priming = false }()
			for _, m := range u.prime {
				if err := d.decode(m, discard); err != nil {
					return err
				}
			}
			return nil
		}()
		var (
			evs  []*replication.BinlogEvent
			size int
		)
		emit := func(ev *replication.BinlogEvent) error {
			evs = append(evs, ev)
			if size += int(ev.Header.EventSize); size >= chunkBytes {
				if err := send(u, chunk{evs: evs, signedness: d.takeTables()}); err != nil {
					return err
				}
				evs, size = nil, 0
			}
			return nil
		}
		for _, raw := range u.raws {
			if err != nil {
				break
			}
			err = d.decode(raw, emit)
		}
		if ctx.Err() != nil {
			return
		}
		if send(u, chunk{evs: evs, signedness: d.takeTables(), err: err}) != nil {
			return
		}
		close(u.chunks)
	}
}

// touchConn notes the time of every read that returned bytes.
type touchConn struct {
	net.Conn
	last *atomic.Int64
}

func (c *touchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (r *reader) handle(ctx context.Context, ev *replication.BinlogEvent) error {
	r.src.metrics.events.Inc()
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		r.file = string(e.NextLogName)
	case *replication.MariadbGTIDEvent:
		r.gtid = e.GTID.String()
		r.commit = time.Unix(int64(ev.Header.Timestamp), 0)
		if !e.IsStandalone() {
			r.begin()
		}
	case *replication.GTIDEvent:
		r.mysqlGTID(ev, e)
	case *replication.GtidTaggedLogEvent: // MySQL 8.4: gtid_next=uuid:tag:n
		r.mysqlGTID(ev, &e.GTIDEvent)
	case *replication.HeartbeatEvent:
		if !r.inTxn && ev.Header.LogPos > 0 {
			file := e.Filename
			if file == "" {
				file = r.file
			}
			r.reach(Position{File: file, Pos: ev.Header.LogPos})
		}
	case *replication.QueryEvent:
		return r.query(ctx, ev, e)
	case *replication.TableMapEvent:
		return r.tableMap(e, ev.RawData)
	case *replication.RowsEvent:
		return r.rows(ctx, ev, e)
	case *replication.XIDEvent:
		return r.end(ctx, ev)
	case *replication.TransactionPayloadEvent:
		for _, sub := range e.Events {
			if err := r.handle(ctx, sub); err != nil {
				return err
			}
		}
	}
	return nil
}

// mysqlGTID notes the GTID and commit time of the MySQL transaction that
// follows (its BEGIN comes as a query event).
func (r *reader) mysqlGTID(ev *replication.BinlogEvent, e *replication.GTIDEvent) {
	r.gtid = ""
	if next, err := e.GTIDNext(); err == nil {
		r.gtid = next.String()
	}
	r.commit = time.Unix(int64(ev.Header.Timestamp), 0)
	if e.OriginalCommitTimestamp > 0 {
		r.commit = e.OriginalCommitTime()
	}
}

func (r *reader) begin() {
	r.inTxn = true
	r.split = false
	r.txn = &Txn{GTID: r.gtid, Commit: r.commit}
}

func (r *reader) query(ctx context.Context, ev *replication.BinlogEvent, e *replication.QueryEvent) error {
	q := strings.TrimSpace(string(e.Query))
	switch {
	case strings.EqualFold(q, "BEGIN"):
		if !r.inTxn {
			r.begin()
		}
		return nil
	case strings.EqualFold(q, "COMMIT"):
		return r.end(ctx, ev)
	case r.inTxn:
		// SAVEPOINT, or a statement logged in STATEMENT format by a session
		// that overrode binlog_format: nothing cachesync can apply.
		if isDML(q) {
			r.src.metrics.statementEvents.Inc()
			kind, _ := describeStatement(q, string(e.Schema))
			r.src.log.Warn().Str("schema", string(e.Schema)).Str("statement", kind).Msg("statement-format DML in the binlog is ignored; keep binlog_format=ROW for every session")
		}
		return nil
	}
	// DDL: its own transaction. Row events carry their column names, so
	// nothing needs refreshing; the checkpoint moves past the statement.
	r.begin()
	r.txn.DDL = q
	// Logged as kind and table, and only for schemas with ruled tables:
	// the text may hold passwords (CREATE USER … IDENTIFIED BY).
	if kind, table := describeStatement(q, string(e.Schema)); r.src.ruledSchema(string(e.Schema)) || (table != "" && r.src.ruledSchema(strings.SplitN(table, ".", 2)[0])) {
		r.src.log.Info().Str("schema", string(e.Schema)).Str("statement", kind).Str("table", table).Msg("DDL in binlog")
	}
	if isTruncate(q) {
		if name, ok := truncatedTable(q, string(e.Schema)); !ok {
			r.src.log.Warn().Str("schema", string(e.Schema)).Msg("TRUNCATE of a table this daemon cannot name: if it is ruled, its keys stay (request a snapshot of it)")
		} else if r.src.watch[name] {
			r.txn.Truncated = name
		}
	}
	return r.end(ctx, ev)
}

// watched reports whether rows of schema.table are kept. Safe for
// concurrent use: watch is never written after NewSource.
// It runs for every rows event: the name is built and lowered (ASCII) in
// a buffer on the stack, and a lookup by string(bytes) does not allocate.
func (s *Source) watched(schema, table []byte) bool {
	var buf [128]byte
	name := append(append(append(buf[:0], schema...), '.'), table...)
	for i, c := range name {
		if c >= utf8.RuneSelf {
			return s.watch[strings.ToLower(string(name))]
		}
		if 'A' <= c && c <= 'Z' {
			name[i] = c + 'a' - 'A'
		}
	}
	return s.watch[string(name)]
}

func (r *reader) tableMap(e *replication.TableMapEvent, raw []byte) error {
	signedness := r.signedness[e]
	// A table map repeats before every row event of its table, mostly
	// unchanged: reading its column names, collations and conversions
	// again cost 13% of the CPU with single-row transactions. The same
	// body (the header holds times and positions) means the same table.
	var body []byte
	if len(raw) > replication.EventHeaderSize {
		body = raw[replication.EventHeaderSize:]
	}
	if prev, ok := r.tableMaps[e.TableID]; ok && body != nil && bytes.Equal(prev, body) {
		return nil
	}
	if err := r.readTableMap(e, signedness); err != nil {
		return err
	}
	if body != nil {
		if r.tableMaps == nil {
			r.tableMaps = make(map[uint64][]byte)
		}
		r.tableMaps[e.TableID] = bytes.Clone(body)
	}
	return nil
}

// readTableMap records the table e maps, or nil for an unwatched one;
// signedness is e's SignednessBitmap, taken out of it by the decoder.
func (r *reader) readTableMap(e *replication.TableMapEvent, signedness []byte) error {
	if !r.src.watched(e.Schema, e.Table) {
		r.tables[e.TableID] = nil
		return nil
	}
	cols := e.ColumnNameString()
	if len(cols) != int(e.ColumnCount) {
		return fmt.Errorf("%w: table map of %s.%s has %d column names for %d columns: set binlog_row_metadata=FULL on the server",
			ErrFatal, e.Schema, e.Table, len(cols), e.ColumnCount)
	}
	conv := valueConvs(e, signedness)
	if old := r.tables[e.TableID]; old != nil && equalStrings(old.Columns, cols) && equalConvs(old.conv, conv) {
		return nil
	}
	// A new table id, or the same id with other columns (after DDL).
	dec := make([]bool, len(cols))
	for i, t := range e.ColumnType {
		dec[i] = t == mysql.MYSQL_TYPE_NEWDECIMAL || t == mysql.MYSQL_TYPE_DECIMAL
	}
	for id, t := range r.tables { // reuse the *Table when only the id moved
		if t != nil && t.Schema == string(e.Schema) && t.Name == string(e.Table) && equalStrings(t.Columns, cols) && equalConvs(t.conv, conv) {
			r.tables[e.TableID] = t
			delete(r.tables, id)
			return nil
		}
	}
	t := NewTable(string(e.Schema), string(e.Table), cols, dec)
	t.conv = conv
	r.tables[e.TableID] = t
	return nil
}

func (r *reader) rows(ctx context.Context, ev *replication.BinlogEvent, e *replication.RowsEvent) error {
	t := r.tables[e.TableID]
	if t == nil {
		return nil
	}
	if r.txn == nil { // row event outside BEGIN (non-transactional engine)
		r.begin()
	}
	for _, row := range e.Rows {
		if len(row) != len(t.Columns) {
			return fmt.Errorf("%w: row of %s has %d values for %d named columns", ErrFatal, t.FullName(), len(row), len(t.Columns))
		}
		t.convert(row)
	}
	for _, row := range e.Rows {
		r.txn.Bytes += rowBytes(row) + 64 // + the Change
	}
	switch ev.Header.EventType {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2, replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1:
		for _, row := range e.Rows {
			r.txn.Changes = append(r.txn.Changes, Change{Table: t, Op: Insert, After: row})
		}
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2, replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1:
		for _, row := range e.Rows {
			r.txn.Changes = append(r.txn.Changes, Change{Table: t, Op: Delete, Before: row})
		}
	case replication.UPDATE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv2, replication.MARIADB_UPDATE_ROWS_COMPRESSED_EVENT_V1:
		for i := 0; i+1 < len(e.Rows); i += 2 {
			r.txn.Changes = append(r.txn.Changes, Change{Table: t, Op: Update, Before: e.Rows[i], After: e.Rows[i+1]})
		}
	case replication.PARTIAL_UPDATE_ROWS_EVENT: // CheckServer refuses it globally; a session can still set it
		return fmt.Errorf("%w: partial JSON update on %s: a session set binlog_row_value_options=PARTIAL_JSON; cachesync needs binlog_row_value_options=''",
			ErrFatal, t.FullName())
	default:
		return fmt.Errorf("%w: unsupported rows event %s on %s", ErrFatal, ev.Header.EventType, t.FullName())
	}
	if len(r.txn.Changes) >= r.src.cfg.MaxTxnChanges || int64(r.txn.Bytes) >= r.src.cfg.MaxTxnBytes {
		// Send what we have; the rest of the transaction follows.
		piece := r.txn
		piece.Partial = true
		piece.Pos = Position{File: r.file, Pos: ev.Header.LogPos}
		if !r.split {
			r.src.metrics.splitTxns.Inc()
			r.src.log.Warn().Int("max_txn_changes", r.src.cfg.MaxTxnChanges).Int64("max_txn_bytes", r.src.cfg.MaxTxnBytes).Str("gtid", r.gtid).
				Msg("oversized transaction is applied in pieces: readers may see it half-applied")
		}
		r.split = true
		r.txn = &Txn{GTID: piece.GTID, Commit: piece.Commit}
		return r.send(ctx, piece)
	}
	return nil
}

// end completes the current transaction at the event ev.
func (r *reader) end(ctx context.Context, ev *replication.BinlogEvent) error {
	t := r.txn
	if t == nil {
		t = &Txn{GTID: r.gtid, Commit: r.commit}
	}
	t.Pos = Position{File: r.file, Pos: ev.Header.LogPos}
	r.txn, r.inTxn, r.split, r.gtid = nil, false, false, ""
	if err := r.send(ctx, t); err != nil {
		return err
	}
	r.resume = t.Pos
	r.progressed = true
	r.reach(t.Pos)
	return nil
}

func (r *reader) reach(p Position) {
	if v, err := p.Version(); err == nil && v > r.src.reached.Load() {
		r.src.reached.Store(v)
	}
}

func (r *reader) send(ctx context.Context, t *Txn) error {
	if err := r.src.budget.Acquire(ctx, t); err != nil {
		return ctx.Err()
	}
	select {
	case r.out <- t:
		r.src.metrics.txns.Inc()
		r.src.metrics.rows.Add(float64(len(t.Changes)))
		return nil
	case <-ctx.Done():
		t.Release()
		return ctx.Err()
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func isDML(q string) bool {
	w := strings.ToUpper(strings.SplitN(q, " ", 2)[0])
	return w == "INSERT" || w == "UPDATE" || w == "DELETE" || w == "REPLACE"
}

func isTruncate(q string) bool {
	return len(q) >= 8 && strings.EqualFold(q[:8], "TRUNCATE")
}

type sourceMetrics struct {
	events, txns, rows, reconnects, splitTxns, statementEvents prometheus.Counter
}

func newSourceMetrics(reg prometheus.Registerer) *sourceMetrics {
	c := func(name, help string) prometheus.Counter {
		m := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "cachesync", Subsystem: "binlog", Name: name, Help: help})
		if reg != nil {
			reg.MustRegister(m)
		}
		return m
	}
	return &sourceMetrics{
		events:          c("events_total", "Binlog events read."),
		txns:            c("transactions_total", "Transactions (and pieces of split ones) handed to the sink."),
		rows:            c("rows_total", "Row changes of ruled tables handed to the sink."),
		reconnects:      c("reconnects_total", "Binlog connections re-established after a loss."),
		splitTxns:       c("split_transactions_total", "Transactions larger than max_txn_changes, applied in pieces."),
		statementEvents: c("statement_events_total", "Statement-format DML events that could not be applied."),
	}
}
