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
// With Redis Cluster, put a hash tag in K ("goods:{{{id}}}" renders as
// "goods:{42}"): the prefix has no braces, so K's tag also places its
// version and lease keys in K's slot.
package keyspace

// Keyspace derives cachesync's own key names from a prefix.
type Keyspace struct {
	Prefix string
}

// Version is the key holding the version of application key k.
func (s Keyspace) Version(k string) string { return s.Prefix + "v:" + k }

// Lease is the key holding the read path's fill lease for k.
func (s Keyspace) Lease(k string) string { return s.Prefix + "lease:" + k }

// Checkpoint is the hash holding the applied binlog position.
func (s Keyspace) Checkpoint() string { return s.Prefix + "checkpoint" }

// Seq is the counter of invalidation messages.
func (s Keyspace) Seq() string { return s.Prefix + "seq" }

// Snapshot is the set of keys a snapshot in progress has written.
func (s Keyspace) Snapshot() string { return s.Prefix + "snapshot" }

// Leader is the key a process holds while it leads under lease name.
func (s Keyspace) Leader(name string) string { return s.Prefix + "leader:" + name }

// Fence is the counter of the fencing tokens of lease name.
func (s Keyspace) Fence(name string) string { return s.Prefix + "fence:" + name }

// Resync marks a rebuild after Redis went back past the binlog: set until
// the keys the rules own were deleted (see sink.Applier.PurgeOwned).
func (s Keyspace) Resync() string { return s.Prefix + "resync" }

// SnapshotProgress is the hash of the chunked snapshot's progress per table
// (see sink.Applier.SnapshotProgress).
func (s Keyspace) SnapshotProgress() string { return s.Prefix + "snapshot:progress" }
