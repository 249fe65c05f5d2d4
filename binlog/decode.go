package binlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/klauspost/compress/zstd"
)

// decoder parses the events the syncer hands over unparsed (raw mode).
// It exists for MySQL's compressed transactions
// (binlog_transaction_compression): go-mysql decompresses a
// TRANSACTION_PAYLOAD_EVENT whole and parses every event in it before
// handing any on, so one large transaction would sit in memory twice over,
// past max_txn_bytes and the read-ahead budget. decoder streams the
// payload instead: one inner event at a time, each handed on before the
// next is read.
type decoder struct {
	outer *replication.BinlogParser
	// inner parses a payload's events: the same options, no checksums.
	inner    *replication.BinlogParser
	checksum bool // outer events end in a CRC32
	options  func(*replication.BinlogParser)
	// signedness holds the SignednessBitmap taken out of each table map
	// parsed (see takeSignedness) until the reader claims it; a worker
	// hands it on with the events of its unit (see parse).
	signedness map[*replication.TableMapEvent][]byte
	// priming: the events parsed are a unit's table maps parsed again (see
	// unit.prime), never handed to the reader: keep nothing of them.
	priming bool
	// format is the format description event last parsed (raw).
	format *replication.BinlogEvent
	// knownMaps: the last table map parsed in full of each table id.
	knownMaps map[uint64]*knownMap
}

// takeSignedness moves a table map's signedness out of the event, so
// that go-mysql decodes the integers of its rows as signed instead of
// building a map of the unsigned columns for every row image
// (TableMapEvent.UnsignedMap: 7% of the CPU with 10-row transactions).
// The table's conversions (valueConv.unsigned) make them unsigned again.
func (d *decoder) takeSignedness(p *replication.BinlogEvent) {
	if tm, ok := p.Event.(*replication.TableMapEvent); ok {
		if !d.priming {
			if d.signedness == nil {
				d.signedness = make(map[*replication.TableMapEvent][]byte)
			}
			d.signedness[tm] = tm.SignednessBitmap
		}
		tm.SignednessBitmap = nil
	}
}

// takeTables hands over what takeSignedness took since the last call.
func (d *decoder) takeTables() map[*replication.TableMapEvent][]byte {
	m := d.signedness
	d.signedness = nil
	return m
}

// maxPayloadWindow bounds the zstd window a payload may ask for: MySQL's
// levels use 2 MiB (the default level 3) up to 128 MiB (level 22).
const maxPayloadWindow = 128 << 20

// maxInnerEvent bounds one event inside a payload, as max_allowed_packet
// bounds any event (1 GiB at most).
const maxInnerEvent = 1 << 30

func newDecoder(options func(*replication.BinlogParser)) *decoder {
	d := &decoder{outer: replication.NewBinlogParser(), options: options}
	options(d.outer)
	return d
}

// decode parses ev, as the syncer delivered it in raw mode, and calls emit
// with the parsed event, or with each event of a transaction payload in
// turn. The RawData of an emitted event (but a format description) holds
// no checksum, so that equal events have equal bytes past the header. Positions are those go-mysql gives payload events: the payload's
// start for every inner event but the last, its end for the last (the
// commit), so that a transaction resumes whole.
func (d *decoder) decode(ev *replication.BinlogEvent, emit func(*replication.BinlogEvent) error) error {
	if ev.Header.EventType == replication.TRANSACTION_PAYLOAD_EVENT {
		return d.payload(ev, emit)
	}
	var known *replication.TableMapEvent
	if ev.Header.EventType == replication.TABLE_MAP_EVENT {
		known = d.knownTableMap(ev)
		if known != nil {
			d.outer.SetTableMapOptionalMetaDecodeFunc(skipOptionalMeta)
		}
	}
	p, err := d.outer.Parse(ev.RawData)
	if known != nil {
		d.outer.SetTableMapOptionalMetaDecodeFunc(nil)
	}
	if err != nil {
		return fmt.Errorf("parse %s at %d: %w", ev.Header.EventType, ev.Header.LogPos, err)
	}
	if tm, ok := p.Event.(*replication.TableMapEvent); ok {
		if known != nil {
			// The same body: the same fields, the optional metadata
			// (column names, signedness, charsets…) too.
			*tm = *known
		} else {
			d.rememberTableMap(ev, tm)
		}
	}
	d.takeSignedness(p)
	// The syncer computes positions MariaDB leaves at 0.
	p.Header.LogPos = ev.Header.LogPos
	if fde, ok := p.Event.(*replication.FormatDescriptionEvent); ok {
		if err := d.formatChanged(fde, ev.RawData); err != nil {
			return err
		}
		d.format = ev
	} else if d.checksum && len(p.RawData) >= replication.EventHeaderSize+replication.BinlogChecksumLength {
		p.RawData = p.RawData[:len(p.RawData)-replication.BinlogChecksumLength]
	}
	return emit(p)
}

// A table map repeats before every statement's rows, mostly unchanged;
// with binlog_row_metadata=FULL go-mysql decodes its optional metadata
// (column names, charsets…) each time: 6% of the CPU with 10-row
// transactions. The decoder keeps the last one of each table id, and
// takes its fields for a table map whose body is the same.
type knownMap struct {
	body []byte
	ev   replication.TableMapEvent // as parsed, SignednessBitmap in it
}

// maxKnownMaps bounds the table maps kept (table ids change with DDL).
const maxKnownMaps = 1024

// skipOptionalMeta stands in for go-mysql's decoding of a table map's
// optional metadata when the decoder has it already.
func skipOptionalMeta([]byte) error { return nil }

// tableMapBody is the body of a raw table map event, without header and
// checksum.
func (d *decoder) tableMapBody(ev *replication.BinlogEvent) []byte {
	b := ev.RawData[replication.EventHeaderSize:]
	if d.checksum && len(b) >= replication.BinlogChecksumLength {
		b = b[:len(b)-replication.BinlogChecksumLength]
	}
	return b
}

// knownTableMap returns the table map the decoder parsed in full with the
// same body as ev's, or nil.
func (d *decoder) knownTableMap(ev *replication.BinlogEvent) *replication.TableMapEvent {
	if len(ev.RawData) < replication.EventHeaderSize+6 {
		return nil
	}
	k, ok := d.knownMaps[tableID(ev)]
	if !ok || !bytes.Equal(k.body, d.tableMapBody(ev)) {
		return nil
	}
	return &k.ev
}

// rememberTableMap keeps tm, parsed in full from ev, for knownTableMap.
func (d *decoder) rememberTableMap(ev *replication.BinlogEvent, tm *replication.TableMapEvent) {
	if len(ev.RawData) < replication.EventHeaderSize+6 {
		return
	}
	if d.knownMaps == nil || len(d.knownMaps) >= maxKnownMaps {
		d.knownMaps = make(map[uint64]*knownMap)
	}
	d.knownMaps[tableID(ev)] = &knownMap{body: d.tableMapBody(ev), ev: *tm}
}

// formatChanged makes the inner parser's format the outer one's without
// checksums: payload events carry none.
func (d *decoder) formatChanged(fde *replication.FormatDescriptionEvent, raw []byte) error {
	d.knownMaps = nil // a format may read table maps otherwise
	d.checksum = fde.ChecksumAlgorithm == replication.BINLOG_CHECKSUM_ALG_CRC32
	d.inner = replication.NewBinlogParser()
	d.options(d.inner)
	d.inner.SetVerifyChecksum(false)
	plain := bytes.Clone(raw)
	if fde.ChecksumAlgorithm != replication.BINLOG_CHECKSUM_ALG_UNDEF && len(plain) >= 5 {
		plain[len(plain)-5] = byte(replication.BINLOG_CHECKSUM_ALG_OFF)
	}
	if _, err := d.inner.Parse(plain); err != nil {
		return fmt.Errorf("parse format description: %w", err)
	}
	return nil
}

// Transaction payload field types and compression types (MySQL's
// binary_log::Transaction_payload_event).
const (
	payloadEndMark         = 0
	payloadCompressionType = 2
	payloadZSTD            = 0
	payloadNone            = 255
)

func (d *decoder) payload(ev *replication.BinlogEvent, emit func(*replication.BinlogEvent) error) error {
	if d.inner == nil {
		return errors.New("transaction payload before any format description event")
	}
	body := ev.RawData[replication.EventHeaderSize:]
	if d.checksum {
		if len(body) < replication.BinlogChecksumLength {
			return fmt.Errorf("transaction payload at %d: %d bytes", ev.Header.LogPos, len(body))
		}
		body = body[:len(body)-replication.BinlogChecksumLength]
	}
	compression, data, err := payloadFields(body)
	if err != nil {
		return fmt.Errorf("transaction payload at %d: %w", ev.Header.LogPos, err)
	}
	var r io.Reader
	switch compression {
	case payloadNone:
		r = bytes.NewReader(data)
	case payloadZSTD:
		z, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxPayloadWindow), zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
		defer z.Close()
		r = z
	default:
		return fmt.Errorf("%w: transaction payload at %d has compression type %d, which cachesync cannot read", ErrFatal, ev.Header.LogPos, compression)
	}
	start := ev.Header.LogPos
	if start >= ev.Header.EventSize {
		start -= ev.Header.EventSize
	}
	// One event of look-ahead: the last one gets the payload's end.
	var prev *replication.BinlogEvent
	for {
		next, err := d.innerEvent(r)
		if err != nil {
			return fmt.Errorf("transaction payload at %d: %w", ev.Header.LogPos, err)
		}
		if prev != nil {
			if next == nil {
				prev.Header.LogPos = ev.Header.LogPos
			}
			if err := emit(prev); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		next.Header.LogPos = start
		prev = next
	}
}

// innerEvent reads and parses the next event of a payload; nil at its end.
func (d *decoder) innerEvent(r io.Reader) (*replication.BinlogEvent, error) {
	var head [replication.EventHeaderSize]byte
	if _, err := io.ReadFull(r, head[:]); err == io.EOF {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("read event header: %w", err)
	}
	size := binary.LittleEndian.Uint32(head[9:13])
	if size < replication.EventHeaderSize || size > maxInnerEvent {
		return nil, fmt.Errorf("event of %d bytes", size)
	}
	buf := make([]byte, size)
	copy(buf, head[:])
	if _, err := io.ReadFull(r, buf[replication.EventHeaderSize:]); err != nil {
		return nil, fmt.Errorf("read %d-byte event: %w", size, err)
	}
	p, err := d.inner.Parse(buf)
	if err != nil {
		return nil, err
	}
	d.takeSignedness(p)
	return p, nil
}

// payloadFields reads a payload's header fields (type, length, value, each
// length-encoded) up to the end mark and returns the compression type and
// the payload.
func payloadFields(b []byte) (compression uint64, payload []byte, err error) {
	for {
		typ, n, ok := lenenc(b)
		if !ok {
			return 0, nil, errors.New("truncated header")
		}
		b = b[n:]
		if typ == payloadEndMark {
			return compression, b, nil
		}
		size, n, ok := lenenc(b)
		if !ok || uint64(len(b)-n) < size {
			return 0, nil, errors.New("truncated header field")
		}
		b = b[n:]
		if typ == payloadCompressionType {
			v, m, ok := lenenc(b[:size])
			if !ok || uint64(m) != size {
				return 0, nil, errors.New("bad compression type field")
			}
			compression = v
		}
		b = b[size:]
	}
}

// lenenc reads a length-encoded integer (mysql.LengthEncodedInt without
// its panic on a short buffer).
func lenenc(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch b[0] {
	case 0xfb, 0xff:
		return 0, 0, false
	case 0xfc:
		n = 3
	case 0xfd:
		n = 4
	case 0xfe:
		n = 9
	default:
		return uint64(b[0]), 1, true
	}
	if len(b) < n {
		return 0, 0, false
	}
	for i := n - 1; i >= 1; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, n, true
}
