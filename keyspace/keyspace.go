// Package keyspace names the Redis keys cachesync keeps beside application
// keys. The sink writes them and the read path reads them, so the naming
// lives in one place.
//
// For an application key K and prefix P (default "cachesync:"):
//
//	P + "v:" + K      version of K's value: the binlog version that wrote it
//	P + "lease:" + K  read-path fill lease for K; every invalidation deletes it
//	P + "checkpoint"  hash: where the sink has applied the binlog up to
//	P + "seq"         sequence number of the last invalidation message
//	P + "snapshot"    set: keys written while no checkpoint exists (a
//	                  snapshot in progress); gone with the first checkpoint
//	P + "leader:" + N "<token> <holder>" while a process holds lease N
//	                  ("cdc", "jobs"), with the lease's TTL
//	P + "fence:" + N  the last fencing token handed out for lease N
//
// Two settings change the names, for Redis Cluster and for several binlog
// sources writing one Redis:
//
//   - With a Source S, the keys of the source's own state (checkpoint,
//     seq, snapshot journal and progress, leases, fences, resync) carry the
//     hash tag {S}: P + "{S}:checkpoint". They share one slot, so one
//     script may take them all, and each source has its own.
//   - With Cluster, K's version and lease carry a hash tag of K's slot:
//     P + "v:{t}" + K where slot(t) = slot(K), so a script may take K with
//     them whatever K looks like. Per slot, the sink keeps a record of
//     what it applied there (SlotRecord) and, during a snapshot, a journal
//     (SlotJournal).
package keyspace

import (
	"strconv"
	"strings"
	"sync"
)

// Keyspace derives cachesync's own key names from a prefix.
type Keyspace struct {
	Prefix string
	// Source tags the source's own keys (see the package comment); "" keeps
	// the untagged names of a single source on a standalone Redis.
	Source string
	// Cluster places versions and leases in their key's slot.
	Cluster bool
}

// own names a key of the source's own state.
func (s Keyspace) own(name string) string {
	if s.Source == "" {
		return s.Prefix + name
	}
	return s.Prefix + "{" + s.Source + "}:" + name
}

// beside names the key of kind next to application key k: in k's slot
// with Cluster.
func (s Keyspace) beside(kind, k string) string {
	if !s.Cluster {
		return s.Prefix + kind + k
	}
	return s.Prefix + kind + "{" + SlotTag(Slot(k)) + "}" + k
}

// of is the application key whose key of kind key is, if it is one.
func (s Keyspace) of(kind, key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.Prefix+kind)
	if !ok || !s.Cluster {
		return rest, ok
	}
	rest, ok = strings.CutPrefix(rest, "{")
	if !ok {
		return "", false
	}
	tag, k, ok := strings.Cut(rest, "}")
	return k, ok && tag == SlotTag(Slot(k))
}

// VersionOf is the application key whose version key is, if it is one.
func (s Keyspace) VersionOf(key string) (string, bool) { return s.of("v:", key) }

// LeaseOf is the application key whose fill lease key is, if it is one.
func (s Keyspace) LeaseOf(key string) (string, bool) { return s.of("lease:", key) }

// Version is the key holding the version of application key k.
func (s Keyspace) Version(k string) string { return s.beside("v:", k) }

// Lease is the key holding the read path's fill lease for k.
func (s Keyspace) Lease(k string) string { return s.beside("lease:", k) }

// Checkpoint is the hash holding the applied binlog position.
func (s Keyspace) Checkpoint() string { return s.own("checkpoint") }

// Seq is the counter of invalidation messages.
func (s Keyspace) Seq() string { return s.own("seq") }

// Snapshot is the set of keys a snapshot in progress has written (with
// Cluster: only those in the checkpoint's slot, and "" once the snapshot
// started; each other slot has its SlotJournal).
func (s Keyspace) Snapshot() string { return s.own("snapshot") }

// Leader is the key a process holds while it leads under lease name.
func (s Keyspace) Leader(name string) string { return s.own("leader:" + name) }

// Fence is the counter of the fencing tokens of lease name.
func (s Keyspace) Fence(name string) string { return s.own("fence:" + name) }

// Resync marks a rebuild after Redis went back past the binlog: set until
// the keys the rules own were deleted (see sink.Applier.PurgeOwned).
func (s Keyspace) Resync() string { return s.own("resync") }

// SnapshotProgress is the hash of the chunked snapshot's progress per table
// (see sink.Applier.SnapshotProgress).
func (s Keyspace) SnapshotProgress() string { return s.own("snapshot:progress") }

// WrittenSlots is, with Cluster, the bitmap of the slots whose record
// (SlotRecord) this source created.
func (s Keyspace) WrittenSlots() string { return s.own("slots") }

// Sources is the hash of the sources writing this Redis (field: source
// name, value: what its rules write), shared by all of them: see
// sink.Applier.RegisterSource.
func (s Keyspace) Sources() string { return s.Prefix + "sources" }

// SlotRecord is the hash in which, with Cluster, the sink records what it
// applied to the keys of slot (see sink's apply per slot).
func (s Keyspace) SlotRecord(slot int) string {
	return s.Prefix + "slot:{" + SlotTag(slot) + "}:" + s.Source
}

// SlotJournal is, with Cluster, the set of the keys of slot that a
// snapshot in progress has written.
func (s Keyspace) SlotJournal(slot int) string {
	return s.Prefix + "snapshot:{" + SlotTag(slot) + "}:" + s.Source
}

// Slots is the number of hash slots of a Redis Cluster.
const Slots = 16384

// Slot is Redis Cluster's hash slot of key: CRC16 of the key's hash tag
// (the part between the first "{" and the next "}", if not empty), else
// of the whole key.
func Slot(key string) int {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						key = key[i+1 : j]
					}
					break
				}
			}
			break
		}
	}
	return int(crc16(key)) & (Slots - 1)
}

// SlotTag is a short hash tag whose slot is slot. The tags are found the
// same way every time (the first base-36 number per slot): they are part
// of stored key names.
func SlotTag(slot int) string {
	tagsOnce.Do(func() {
		left := Slots
		for i := int64(0); left > 0; i++ {
			t := strconv.FormatInt(i, 36)
			if s := crc16(t) & (Slots - 1); tags[s] == "" {
				tags[s] = t
				left--
			}
		}
	})
	return tags[slot]
}

var (
	tagsOnce sync.Once
	tags     [Slots]string
)

// crc16 is CRC-16/XMODEM, the checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
