package binlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
)

// capturedTxn is one transaction read raw off the real server: the format
// description event of its binlog, and its events (GTID first, XID last).
type capturedTxn struct {
	fde    *replication.BinlogEvent
	events []*replication.BinlogEvent
}

// captureTxn commits stmts as one transaction and reads its events raw,
// as the daemon's syncer delivers them.
func captureTxn(t *testing.T, e *streamEnv, stmts ...string) capturedTxn {
	t.Helper()
	start, err := CurrentPosition(context.Background(), e.db)
	if err != nil {
		t.Fatal(err)
	}
	e.tx(stmts...)
	host, port := e.src.cfg.hostPort()
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 7101, Flavor: "mariadb", Host: host, Port: port, User: "root", RawModeEnabled: true,
	})
	defer syncer.Close()
	st, err := syncer.StartSync(mysql.Position{Name: start.File, Pos: start.Pos})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c capturedTxn
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch ev.Header.EventType {
		case replication.FORMAT_DESCRIPTION_EVENT:
			c.fde = ev
		case replication.MARIADB_GTID_EVENT, replication.TABLE_MAP_EVENT, replication.WRITE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv1:
			c.events = append(c.events, ev)
		case replication.XID_EVENT:
			c.events = append(c.events, ev)
			return c
		}
	}
}

// payloadBuilder writes MySQL's TRANSACTION_PAYLOAD_EVENT around events:
// each without its checksum and with position 0, as MySQL copies them from
// the transaction cache, compressed as one zstd frame.
type payloadBuilder struct {
	buf          bytes.Buffer
	z            *zstd.Encoder
	uncompressed int
}

func newPayloadBuilder(t *testing.T) *payloadBuilder {
	p := &payloadBuilder{}
	var err error
	if p.z, err = zstd.NewWriter(&p.buf); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *payloadBuilder) add(t *testing.T, ev *replication.BinlogEvent) {
	raw := bytes.Clone(ev.RawData[:len(ev.RawData)-replication.BinlogChecksumLength])
	binary.LittleEndian.PutUint32(raw[9:13], uint32(len(raw))) // event size
	binary.LittleEndian.PutUint32(raw[13:17], 0)               // log pos
	if _, err := p.z.Write(raw); err != nil {
		t.Fatal(err)
	}
	p.uncompressed += len(raw)
}

// event closes the frame and returns the payload event ending at logPos.
func (p *payloadBuilder) event(t *testing.T, logPos uint32) *replication.BinlogEvent {
	if err := p.z.Close(); err != nil {
		t.Fatal(err)
	}
	field := func(b []byte, typ, v uint64) []byte {
		val := mysql.PutLengthEncodedInt(v)
		b = append(b, mysql.PutLengthEncodedInt(typ)...)
		b = append(b, mysql.PutLengthEncodedInt(uint64(len(val)))...)
		return append(b, val...)
	}
	var body []byte
	body = field(body, 1, uint64(p.buf.Len()))    // payload size
	body = field(body, 2, payloadZSTD)            // compression type
	body = field(body, 3, uint64(p.uncompressed)) // uncompressed size
	body = append(body, payloadEndMark)
	body = append(body, p.buf.Bytes()...)
	body = append(body, 0, 0, 0, 0) // checksum, not verified
	raw := make([]byte, replication.EventHeaderSize, replication.EventHeaderSize+len(body))
	raw[4] = byte(replication.TRANSACTION_PAYLOAD_EVENT)
	binary.LittleEndian.PutUint32(raw[5:9], 1)
	binary.LittleEndian.PutUint32(raw[9:13], uint32(replication.EventHeaderSize+len(body)))
	binary.LittleEndian.PutUint32(raw[13:17], logPos)
	raw = append(raw, body...)
	h := &replication.EventHeader{}
	if err := h.Decode(raw); err != nil {
		t.Fatal(err)
	}
	return &replication.BinlogEvent{RawData: raw, Header: h, Event: &replication.GenericEvent{}}
}

// heapPeak samples the live heap until stop and returns its peak.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// A MySQL compressed transaction (binlog_transaction_compression) is read
// one event at a time out of its payload: memory stays within the
// read-ahead budget however large the transaction. No MySQL server runs
// here: the payload is built from a real MariaDB transaction's events,
// compressed as MySQL does, and fed to the decoder and reader the daemon
// runs.
func TestCompressedPayloadStreamed(t *testing.T) {
	db := freshDB(t, "payload")
	e := startSource(t, mariadb, db, 100, "payload.big")
	e.exec("CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(2000))")
	// 1,000 rows of 1 KiB, in MariaDB's 8 KiB row events.
	var ins []string
	for i := range 1000 {
		ins = append(ins, fmt.Sprintf("INSERT INTO big VALUES (%d, '%s')", i, strings.Repeat(string(rune('a'+i%26)), 1000)))
	}
	c := captureTxn(t, e, ins...)
	gtid, rows, xid := c.events[0], c.events[1:len(c.events)-1], c.events[len(c.events)-1]

	// 160 copies of the rows: 160,000 rows, ~165 MB uncompressed.
	const copies = 160
	b := newPayloadBuilder(t)
	for range copies {
		for _, ev := range rows {
			b.add(t, ev)
		}
	}
	b.add(t, xid)
	const end = 987654
	payload := b.event(t, end)
	t.Logf("payload: %d bytes compressed, %d uncompressed", len(payload.RawData), b.uncompressed)

	out := make(chan *Txn, 4)
	r := &reader{
		src:    NewSource(Config{MaxTxnChanges: 1000, MaxTxnBytes: 1 << 20}, "mysql", []string{"payload.big"}, zerolog.Nop(), nil),
		out:    out,
		file:   "binlog.000001",
		tables: map[uint64]*Table{},
	}
	r.src.SetBudget(NewBudget(8 << 20))
	var got, pieces atomic.Int64
	var last atomic.Pointer[Txn]
	var first atomic.Pointer[Change]
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for txn := range out {
			if first.Load() == nil && len(txn.Changes) > 0 {
				first.Store(&txn.Changes[0])
			}
			got.Add(int64(len(txn.Changes)))
			pieces.Add(1)
			txn.Release()
			if !txn.Partial {
				last.Store(txn)
				return
			}
		}
	}()
	runtime.GC()
	stop := make(chan struct{})
	peak := heapPeak(stop)
	// Through the stream's decoding workers, as the syncer hands events on.
	st := replication.NewBinlogStreamer()
	for _, ev := range []*replication.BinlogEvent{c.fde, gtid, payload} {
		if err := st.AddEventToStreamer(ev); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	units, stopParse := parse(ctx, st, func() *decoder { return newDecoder(r.src.parserOptions) }, 2, unitBytes)
	defer stopParse()
	defer cancel()
	handled := make(chan error, 1)
	go func() {
		for {
			select {
			case u := <-units:
				for c := range u.chunks {
					r.signedness = c.signedness
					for _, ev := range c.evs {
						if err := r.handle(ctx, ev); err != nil {
							handled <- err
							return
						}
					}
					if c.err != nil {
						handled <- c.err
						return
					}
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case <-drained:
	case err := <-handled:
		t.Fatal(err)
	}
	close(stop)
	p := <-peak

	if want := int64(copies * 1000); got.Load() != want {
		t.Fatalf("%d rows out of the payload, want %d", got.Load(), want)
	}
	if ch := first.Load(); ch.Op != Insert || ch.After[0] != int32(0) || ch.After[1] != strings.Repeat("a", 1000) {
		t.Errorf("first row %v %v", ch.Op, ch.After[0])
	}
	txn := last.Load()
	if txn.Pos != (Position{"binlog.000001", end}) {
		t.Errorf("transaction ends at %s, want the payload's end binlog.000001:%d", txn.Pos, end)
	}
	if txn.GTID == "" {
		t.Error("GTID lost")
	}
	// Whole, the payload would be ~165 MB of bytes and more of parsed rows.
	t.Logf("%d pieces, heap peak %.1f MiB", pieces.Load(), float64(p)/(1<<20))
	if p > 128<<20 { // less than the payload; 597 MiB when go-mysql decoded it whole
		t.Errorf("heap peaked at %.1f MiB while reading a %d MB payload: it was not streamed", float64(p)/(1<<20), b.uncompressed>>20)
	}
}

// A payload's header fields are read without trusting their lengths: every
// truncation is an error, never a panic.
func TestPayloadFields(t *testing.T) {
	hdr := []byte{1, 3, 0xfc, 0x10, 0x27, 2, 1, 0, 3, 1, 250, payloadEndMark}
	comp, data, err := payloadFields(append(bytes.Clone(hdr), 'x', 'y'))
	if err != nil || comp != payloadZSTD || string(data) != "xy" {
		t.Fatalf("payloadFields = %d, %q, %v", comp, data, err)
	}
	if comp, _, err := payloadFields([]byte{2, 3, 0xfc, 0xff, 0x00, 0}); err != nil || comp != payloadNone {
		t.Errorf("compression NONE = %d, %v", comp, err)
	}
	for i := range len(hdr) - 1 {
		if _, _, err := payloadFields(hdr[:i]); err == nil {
			t.Errorf("header cut at %d bytes read without error", i)
		}
	}
	for _, bad := range [][]byte{{2, 3, 0xfc, 1}, {2, 0xfe, 1}, {0xfb}, {1, 0xfd, 1, 0}} {
		if _, _, err := payloadFields(bad); err == nil {
			t.Errorf("payloadFields(%x) read without error", bad)
		}
	}
}
