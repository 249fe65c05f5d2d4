package sink

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/cachesync/cachesync/binlog"
	"github.com/prometheus/client_golang/prometheus"
)

// Rule kinds.
const (
	KindInvalidate = "invalidate" // delete keys (and their leases)
	KindRewrite    = "rewrite"    // store the after-image; delete on row delete
	KindMirror     = "mirror"     // store one column's value
	KindMember     = "member"     // keep a templated member in a set or hash
)

// Ops of a member rule.
const (
	OpSync   = "sync"   // add on entering the condition, remove on leaving it (default)
	OpRemove = "remove" // remove when the after-image matches; never add
)

// RuleConfig is one rule as written in the configuration file.
type RuleConfig struct {
	// Table is "schema.table".
	Table string `yaml:"table"`
	Kind  string `yaml:"kind"`
	// Keys are the key templates an invalidate rule deletes.
	Keys []string `yaml:"keys"`
	// Key is the key template of a rewrite or mirror rule, or the set
	// (hash, with Value) of a member rule.
	Key string `yaml:"key"`
	// Format of a rewrite rule: "json" (a string holding a JSON object,
	// the default) or "hash" (one field per column; NULLs are omitted).
	Format string `yaml:"format"`
	// Columns a rewrite rule stores; empty means all.
	Columns []string `yaml:"columns"`
	// Column a mirror rule stores.
	Column string `yaml:"column"`
	// Member template of a member rule.
	Member string `yaml:"member"`
	// When restricts a member rule to rows matching the condition: a row
	// entering the condition adds its member, a row leaving it removes it.
	When *Condition `yaml:"when"`
	// Op of a member rule: OpSync (the default) or OpRemove, which removes
	// the member of every inserted or updated row whose after-image matches
	// When, never adds, and ignores deletes.
	Op string `yaml:"op"`
	// Value template of a member rule: Key is then a hash of member ->
	// value. Adding is HSET; removing deletes the field only while it
	// still holds the row's value, so an older row never removes the entry
	// a newer one wrote.
	Value string `yaml:"value"`
	// Versioned keeps, for a rewrite or mirror rule, the binlog version of
	// each key's value beside it (keyspace.Version) and writes only what is
	// not older: needed when something besides this stream writes the key
	// (seckill's rebuild of the stock). The stream alone applies in binlog
	// order under one fenced writer, so by default a key is just SET.
	Versioned bool `yaml:"versioned"`
}

// Condition matches a row whose column's text equals one of the values.
// NULL never matches.
type Condition struct {
	Column string   `yaml:"column"`
	Equals string   `yaml:"equals"`
	In     []string `yaml:"in"`
}

// rule is a compiled RuleConfig.
type rule struct {
	cfg    RuleConfig
	name   string // for metrics and errors: "schema.table/kind:key" ("member-remove" for op remove)
	kind   string
	table  string // lower-case schema.table
	keys   []*Template
	key    *Template
	member *Template
	value  *Template // member rule: the key is a hash member -> value
	remove bool      // member rule: op remove
	hash   bool
	// versioned: rewrite or mirror rule that keeps per-key versions.
	versioned bool
	cols      []string
	column    string
	when      *Condition
	values    map[string]bool // condition values
}

// Rules is the compiled rule set, grouped by table.
type Rules struct {
	byTable map[string][]*rule
	order   []string // tables in first-seen order
}

// CompileRules checks and compiles rule configurations; errors name the
// rule by its position ("rules[2]") and the field.
func CompileRules(cfgs []RuleConfig) (*Rules, error) {
	rs := &Rules{byTable: make(map[string][]*rule)}
	for i, c := range cfgs {
		r, err := compileRule(c)
		if err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		if _, seen := rs.byTable[r.table]; !seen {
			rs.order = append(rs.order, r.table)
		}
		rs.byTable[r.table] = append(rs.byTable[r.table], r)
	}
	return rs, nil
}

func compileRule(c RuleConfig) (*rule, error) {
	parts := strings.Split(c.Table, ".")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("table %q: want schema.table", c.Table)
	}
	r := &rule{cfg: c, kind: c.Kind, table: strings.ToLower(c.Table), versioned: c.Versioned}
	var err error
	tmpl := func(field, s string) *Template {
		if err != nil {
			return nil
		}
		if s == "" {
			err = fmt.Errorf("%s: required for a %s rule", field, c.Kind)
			return nil
		}
		t, perr := ParseTemplate(s)
		if perr != nil {
			err = fmt.Errorf("%s: %w", field, perr)
		}
		return t
	}
	forbid := func(field string, set bool) {
		if err == nil && set {
			err = fmt.Errorf("%s: not used by a %s rule", field, c.Kind)
		}
	}
	switch c.Kind {
	case KindInvalidate:
		if len(c.Keys) == 0 {
			return nil, fmt.Errorf("keys: an invalidate rule needs at least one key template")
		}
		for i, k := range c.Keys {
			r.keys = append(r.keys, tmpl(fmt.Sprintf("keys[%d]", i), k))
		}
		forbid("key", c.Key != "")
		forbid("format", c.Format != "")
		forbid("columns", len(c.Columns) > 0)
		forbid("column", c.Column != "")
		forbid("member", c.Member != "")
		forbid("when", c.When != nil)
		forbid("op", c.Op != "")
		forbid("value", c.Value != "")
		forbid("versioned", c.Versioned)
		r.name = c.Table + "/invalidate:" + strings.Join(c.Keys, ",")
	case KindRewrite:
		r.key = tmpl("key", c.Key)
		switch c.Format {
		case "", "json":
		case "hash":
			r.hash = true
		default:
			return nil, fmt.Errorf("format %q: want json or hash", c.Format)
		}
		r.cols = c.Columns
		forbid("keys", len(c.Keys) > 0)
		forbid("column", c.Column != "")
		forbid("member", c.Member != "")
		forbid("when", c.When != nil)
		forbid("op", c.Op != "")
		forbid("value", c.Value != "")
		r.name = c.Table + "/rewrite:" + c.Key
	case KindMirror:
		r.key = tmpl("key", c.Key)
		if err == nil && c.Column == "" {
			err = fmt.Errorf("column: required for a mirror rule")
		}
		r.column = c.Column
		forbid("keys", len(c.Keys) > 0)
		forbid("format", c.Format != "")
		forbid("columns", len(c.Columns) > 0)
		forbid("member", c.Member != "")
		forbid("when", c.When != nil)
		forbid("op", c.Op != "")
		forbid("value", c.Value != "")
		r.name = c.Table + "/mirror:" + c.Key
	case KindMember:
		r.key = tmpl("key", c.Key)
		r.member = tmpl("member", c.Member)
		if c.When != nil {
			if c.When.Column == "" {
				return nil, fmt.Errorf("when.column: required")
			}
			if (c.When.Equals == "") == (len(c.When.In) == 0) {
				return nil, fmt.Errorf("when: set exactly one of equals or in")
			}
			r.when = c.When
			r.values = map[string]bool{c.When.Equals: true}
			if len(c.When.In) > 0 {
				r.values = make(map[string]bool, len(c.When.In))
				for _, v := range c.When.In {
					r.values[v] = true
				}
			}
		}
		switch c.Op {
		case "", OpSync:
		case OpRemove:
			r.remove = true
		default:
			if err == nil {
				err = fmt.Errorf("op %q: want sync or remove", c.Op)
			}
		}
		if c.Value != "" {
			r.value = tmpl("value", c.Value)
		}
		forbid("keys", len(c.Keys) > 0)
		forbid("format", c.Format != "")
		forbid("columns", len(c.Columns) > 0)
		forbid("column", c.Column != "")
		forbid("versioned", c.Versioned)
		r.name = c.Table + "/member:" + c.Key
		if r.remove {
			r.name = c.Table + "/member-remove:" + c.Key
		}
	case "":
		return nil, fmt.Errorf("kind: required (invalidate, rewrite, mirror or member)")
	default:
		return nil, fmt.Errorf("kind %q: want invalidate, rewrite, mirror or member", c.Kind)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// columns lists every column the rule reads.
func (r *rule) columns() []string {
	var cols []string
	for _, k := range r.keys {
		cols = append(cols, k.Columns()...)
	}
	if r.key != nil {
		cols = append(cols, r.key.Columns()...)
	}
	if r.member != nil {
		cols = append(cols, r.member.Columns()...)
	}
	if r.value != nil {
		cols = append(cols, r.value.Columns()...)
	}
	cols = append(cols, r.cols...)
	if r.column != "" {
		cols = append(cols, r.column)
	}
	if r.when != nil {
		cols = append(cols, r.when.Column)
	}
	return cols
}

// Fingerprint identifies what table's stateful rules write, so that a
// change of them since its snapshot is noticed (see SnapshotProgress):
// a hash of the rules in any order, without what does not change the
// keys' contents (versioned).
func (rs *Rules) Fingerprint(table string) string {
	var parts []string
	for _, r := range rs.byTable[table] {
		if r.kind == KindInvalidate {
			continue
		}
		c := r.cfg
		c.Table, c.Versioned = strings.ToLower(c.Table), false
		j, _ := json.Marshal(c) // plain strings and slices: cannot fail
		parts = append(parts, string(j))
	}
	sort.Strings(parts)
	sum := sha256.Sum256([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(sum[:8])
}

// Tables lists the ruled tables as "schema.table" (lower case).
func (rs *Rules) Tables() []string { return append([]string(nil), rs.order...) }

// Stateful reports whether some rule keeps state that an empty Redis does
// not reproduce (rewrite, mirror, member): such rules need a snapshot of
// the tables before streaming. Invalidate-only rule sets do not: an empty
// cache is a consistent cache.
func (rs *Rules) Stateful() []string {
	var tables []string
	for _, t := range rs.order {
		for _, r := range rs.byTable[t] {
			if r.kind != KindInvalidate {
				tables = append(tables, t)
				break
			}
		}
	}
	return tables
}

// CheckSchema verifies every ruled table exists and has every column its
// rules name, using the live schema: a typo is a start-up error, not a
// silently empty key. It also refuses a rule that reads a text column in
// a character set the binlog cannot be rendered from exactly (see
// textCharsets).
func (rs *Rules) CheckSchema(ctx context.Context, db *sql.DB) error {
	for _, t := range rs.order {
		schema, name, _ := strings.Cut(t, ".")
		rows, err := db.QueryContext(ctx,
			"SELECT LOWER(COLUMN_NAME), COALESCE(LOWER(CHARACTER_SET_NAME), '') FROM information_schema.COLUMNS WHERE LOWER(TABLE_SCHEMA)=? AND LOWER(TABLE_NAME)=? ORDER BY ORDINAL_POSITION", schema, name)
		if err != nil {
			return fmt.Errorf("read columns of %s: %w", t, err)
		}
		charset := map[string]string{} // column -> character set ("" for none)
		var all []string
		for rows.Next() {
			var c, cs string
			if err := rows.Scan(&c, &cs); err != nil {
				rows.Close()
				return err
			}
			charset[c] = cs
			all = append(all, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(charset) == 0 {
			return fmt.Errorf("rule table %s does not exist on the server", t)
		}
		for _, r := range rs.byTable[t] {
			cols := r.columns()
			for _, c := range cols {
				if _, ok := charset[strings.ToLower(c)]; !ok {
					sorted := slices.Clone(all)
					sort.Strings(sorted)
					return fmt.Errorf("rule %s: column %q does not exist in %s (columns: %s)", r.name, c, t, strings.Join(sorted, ", "))
				}
			}
			if r.kind == KindRewrite && len(r.cols) == 0 {
				cols = all // every column
			}
			for _, c := range cols {
				if cs := charset[strings.ToLower(c)]; cs != "" && !textCharsets[cs] {
					return fmt.Errorf("rule %s: column %q of %s is in character set %s, which cachesync cannot render exactly "+
						"(text: utf8mb4, utf8mb3, ascii, latin1; bytes: binary): convert the column to utf8mb4 or leave it out of the rule",
						r.name, c, t, cs)
				}
			}
		}
	}
	return nil
}

// textCharsets are the character sets whose values reach Redis the same
// from the snapshot (which the server converts to utf8mb4) and from the
// binlog (which holds the column's own bytes): UTF-8 as it is, latin1
// converted as the server converts it, binary as bytes. Any other would
// reach Redis in its own encoding from the binlog and in UTF-8 from the
// snapshot.
var textCharsets = map[string]bool{"utf8mb4": true, "utf8mb3": true, "utf8": true, "ascii": true, "latin1": true, "binary": true}

// boundRule is a rule resolved against one binlog table layout.
type boundRule struct {
	*rule
	keys    []bound
	key     bound
	member  bound
	value   bound // valid when rule.value != nil
	cols    []int // rewrite: column indexes, mirror: one
	names   [][]byte
	decimal []bool
	cond    int // condition column index
	applied int // changes applied in the batch being built
	counter prometheus.Counter
}

func (r *rule) bind(t *binlog.Table) (*boundRule, error) {
	b := &boundRule{rule: r, cond: -1}
	var err error
	for _, k := range r.keys {
		kb, kerr := k.bind(t)
		if kerr != nil {
			return nil, fmt.Errorf("rule %s: %w", r.name, kerr)
		}
		b.keys = append(b.keys, kb)
	}
	if r.key != nil {
		if b.key, err = r.key.bind(t); err != nil {
			return nil, fmt.Errorf("rule %s: %w", r.name, err)
		}
	}
	if r.member != nil {
		if b.member, err = r.member.bind(t); err != nil {
			return nil, fmt.Errorf("rule %s: %w", r.name, err)
		}
	}
	if r.value != nil {
		if b.value, err = r.value.bind(t); err != nil {
			return nil, fmt.Errorf("rule %s: %w", r.name, err)
		}
	}
	col := func(name string) (int, error) {
		i, ok := t.Column(name)
		if !ok {
			return 0, fmt.Errorf("rule %s: column %q is not in %s (binlog columns: %s)", r.name, name, t.FullName(), strings.Join(t.Columns, ", "))
		}
		return i, nil
	}
	switch r.kind {
	case KindRewrite:
		names := r.cols
		if len(names) == 0 {
			names = t.Columns
		}
		for _, n := range names {
			i, err := col(n)
			if err != nil {
				return nil, err
			}
			b.cols = append(b.cols, i)
			b.names = append(b.names, []byte(t.Columns[i]))
		}
		b.decimal = t.Decimal
	case KindMirror:
		i, err := col(r.column)
		if err != nil {
			return nil, err
		}
		b.cols = []int{i}
	}
	if r.when != nil {
		if b.cond, err = col(r.when.Column); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// matches reports whether row satisfies the rule's condition.
func (b *boundRule) matches(row []any, scratch []byte) bool {
	if row == nil {
		return false
	}
	if b.cond < 0 {
		return true
	}
	v := row[b.cond]
	if v == nil {
		return false
	}
	return b.values[string(appendValue(scratch[:0], v))]
}

// Owns reports whether key is one the rules write and a snapshot rebuilds:
// it matches a key template of an invalidate, rewrite, mirror or (sync)
// member rule. Keys only member-remove rules name (a sale's pending set)
// are the application's: the rules only take members out of them.
func (rs *Rules) Owns(key string) bool {
	for _, t := range rs.order {
		for _, r := range rs.byTable[t] {
			if !r.remove && r.writes(key) {
				return true
			}
		}
	}
	return false
}

// truncated returns the key templates whose keys a TRUNCATE of table
// leaves without a row: those of its rules, but member-remove ones (their
// sets are the application's).
func (rs *Rules) truncated(table string) []*Template {
	var ts []*Template
	for _, r := range rs.byTable[table] {
		ts = append(ts, r.keys...)
		if r.key != nil && !r.remove {
			ts = append(ts, r.key)
		}
	}
	return ts
}

// keptFor reports whether key, matched by a template of table, is also one
// a stateful rule of another table writes: a TRUNCATE of table keeps it.
func (rs *Rules) keptFor(table, key string) bool {
	for _, t := range rs.order {
		if t == table {
			continue
		}
		for _, r := range rs.byTable[t] {
			if r.kind != KindInvalidate && !r.remove && r.key.Match(key) {
				return true
			}
		}
	}
	return false
}

// writes reports whether key matches one of the rule's key templates.
func (r *rule) writes(key string) bool {
	for _, k := range r.keys {
		if k.Match(key) {
			return true
		}
	}
	return r.key != nil && r.key.Match(key)
}
