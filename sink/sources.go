package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/keyspace"
)

// Several sources: one daemon per MySQL primary, all writing one Redis.
// Each has its own checkpoint, seq, snapshot and lease keys (tagged with
// its name, see package keyspace) and its own invalidation channel. Their
// versions do not compare (two binlogs), so two sources must not write the
// same key, except where order does not matter: both only invalidate it
// (deleting twice is deleting), or both keep members in it (each source
// adds and removes its own rows' members).

// ErrSourceOverlap means another source's rules may write keys this
// source's rules write (see RegisterSource).
var ErrSourceOverlap = errors.New("rules of two sources write the same keys")

// sourceRules is what a source registers: its rules' key templates.
type sourceRules struct {
	Rules []sourceRule `json:"rules"`
	At    time.Time    `json:"at"`
}

type sourceRule struct {
	Name string   `json:"name"`
	Kind string   `json:"kind"`
	Keys []string `json:"keys"`
}

// registration lists the key templates of rs.
func (rs *Rules) registration() sourceRules {
	var out sourceRules
	for _, table := range rs.order {
		for _, r := range rs.byTable[table] {
			sr := sourceRule{Name: r.name, Kind: r.kind}
			for _, t := range r.keys {
				sr.Keys = append(sr.Keys, t.String())
			}
			if r.key != nil {
				sr.Keys = append(sr.Keys, r.key.String())
			}
			out.Rules = append(out.Rules, sr)
		}
	}
	return out
}

// RegisterSource records this source's key templates in the registry
// (keyspace.Sources) and refuses with ErrSourceOverlap when another
// source registered a template that can render a key one of this
// source's templates renders, unless both rules are invalidate rules or
// both member rules. A daemon without a source name registers nothing:
// it is the only source. Without write it only checks (validate). The
// registry keeps a source's entry after it is gone; remove it with HDEL.
func (a *Applier) RegisterSource(ctx context.Context, write bool) error {
	if a.ks.Source == "" {
		return nil
	}
	mine := a.rules.registration()
	others, err := a.rdb.HGetAll(ctx, a.ks.Sources()).Result()
	if err != nil {
		return fmt.Errorf("read the sources registry %s: %w", a.ks.Sources(), err)
	}
	names := make([]string, 0, len(others))
	for name := range others {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if name == a.ks.Source {
			continue
		}
		var theirs sourceRules
		if err := json.Unmarshal([]byte(others[name]), &theirs); err != nil {
			return fmt.Errorf("sources registry %s: entry of %q: %w", a.ks.Sources(), name, err)
		}
		if ours, their := overlap(mine, theirs); ours != "" {
			return fmt.Errorf("%w: %s of this source (%q) and %s of source %q; give one of them other keys (a prefix per source, say), or, if source %q is gone, remove it from the registry: HDEL %s %s",
				ErrSourceOverlap, ours, a.ks.Source, their, name, name, a.ks.Sources(), name)
		}
	}
	if !write {
		return nil
	}
	mine.At = time.Now().UTC()
	b, _ := json.Marshal(mine)
	if err := a.rdb.HSet(ctx, a.ks.Sources(), a.ks.Source, b).Err(); err != nil {
		return fmt.Errorf("write the sources registry %s: %w", a.ks.Sources(), err)
	}
	return nil
}

// overlap names the first pair of rules of a and b that may write one key
// in an order-dependent way, or "" for none.
func overlap(a, b sourceRules) (inA, inB string) {
	for _, ra := range a.Rules {
		for _, rb := range b.Rules {
			if ra.Kind == rb.Kind && (ra.Kind == KindInvalidate || ra.Kind == KindMember) {
				continue
			}
			for _, ka := range ra.Keys {
				for _, kb := range rb.Keys {
					if templatesMeet(ka, kb) {
						return fmt.Sprintf("rule %s (key %q)", ra.Name, ka), fmt.Sprintf("rule %s (key %q)", rb.Name, kb)
					}
				}
			}
		}
	}
	return "", ""
}

// templatesMeet reports whether some key can be rendered by both templates,
// judged on renderings with a few column values: a rendering of one that
// the other matches.
func templatesMeet(a, b string) bool {
	ta, errA := ParseTemplate(a)
	tb, errB := ParseTemplate(b)
	if errA != nil || errB != nil {
		return a == b
	}
	for _, v := range []string{"0", "1", "x", ""} {
		if tb.Match(ta.render(v)) || ta.Match(tb.render(v)) {
			return true
		}
	}
	return false
}

// render renders t with v for every column.
func (t *Template) render(v string) string {
	var b strings.Builder
	for _, p := range t.parts {
		if p.col != "" {
			b.WriteString(v)
		} else {
			b.WriteString(p.lit)
		}
	}
	return b.String()
}

// SlotWarnings names, for a Redis Cluster, the rules whose keys for one
// row may fall in different hash slots: they do not change together
// there (see applySlots). Tie them with a hash tag ("goods:{{{id}}}").
func (rs *Rules) SlotWarnings() []string {
	var out []string
	for _, table := range rs.order {
		for _, r := range rs.byTable[table] {
			if len(r.keys) < 2 {
				continue
			}
			for _, v := range []string{"0", "1", "x"} {
				first := keyspace.Slot(r.keys[0].render(v))
				split := false
				for _, t := range r.keys[1:] {
					split = split || keyspace.Slot(t.render(v)) != first
				}
				if split {
					var ks []string
					for _, t := range r.keys {
						ks = append(ks, fmt.Sprintf("%q", t.String()))
					}
					out = append(out, fmt.Sprintf("rule %s: its keys %s for one row fall in different hash slots, so on a Redis Cluster they do not change together; tie them with one hash tag (e.g. \"goods:{{{id}}}\" and \"goods:{{{id}}}:detail\") if readers need that", r.name, strings.Join(ks, ", ")))
					break
				}
			}
		}
	}
	return out
}
