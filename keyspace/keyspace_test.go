package keyspace

import "testing"

// Slot must agree with Redis: the expected slots are CLUSTER KEYSLOT's
// answers (Redis 7.0.15).
func TestSlot(t *testing.T) {
	for key, want := range map[string]int{
		"foo":           12182,
		"bar":           5061,
		"{user1000}.a":  3443,
		"user1000":      3443,
		"foo{}{bar}":    8363, // empty first tag: the whole key
		"foo{{bar}}zap": 4015, // tag "{bar"
		"foo{bar}{zap}": 5061, // the first tag only
		"":              0,
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
}

// Every slot has a tag, and the names beside a key land in its slot.
func TestBesideSameSlot(t *testing.T) {
	for s := 0; s < Slots; s++ {
		if tag := SlotTag(s); tag == "" || Slot("{"+tag+"}") != s {
			t.Fatalf("SlotTag(%d) = %q, in slot %d", s, tag, Slot("{"+tag+"}"))
		}
	}
	ks := Keyspace{Prefix: "cachesync:", Source: "a", Cluster: true}
	for _, k := range []string{"goods:1", "goods:{42}", "{", "}{", "x{}y", "\xff{\x00}", ""} {
		for _, aux := range []string{ks.Version(k), ks.Lease(k)} {
			if Slot(aux) != Slot(k) {
				t.Errorf("%q in slot %d, its key %q in %d", aux, Slot(aux), k, Slot(k))
			}
		}
		for _, s := range []Keyspace{ks, {Prefix: "cachesync:"}} {
			if d, ok := s.VersionOf(s.Version(k)); !ok || d != k {
				t.Errorf("VersionOf(%q) = %q, %v", s.Version(k), d, ok)
			}
			if d, ok := s.LeaseOf(s.Lease(k)); !ok || d != k {
				t.Errorf("LeaseOf(%q) = %q, %v", s.Lease(k), d, ok)
			}
		}
	}
	if _, ok := ks.VersionOf("cachesync:v:{zz}goods:1"); ok {
		t.Error("VersionOf took a tag of another slot")
	}
	if Slot(ks.Checkpoint()) != Slot(ks.Leader("cdc")) || Slot(ks.Seq()) != Slot(ks.Fence("jobs")) || Slot(ks.Checkpoint()) != Slot("{a}") {
		t.Error("a source's own keys are not in one slot")
	}
	if got := (Keyspace{Prefix: "p:"}).Checkpoint(); got != "p:checkpoint" {
		t.Errorf("untagged checkpoint %q", got)
	}
}
