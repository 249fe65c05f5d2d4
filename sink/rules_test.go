package sink

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCompileRulesErrors(t *testing.T) {
	when := func(c string, eq string, in ...string) *Condition { return &Condition{Column: c, Equals: eq, In: in} }
	cases := []struct {
		name string
		rule RuleConfig
		err  string
	}{
		{"no kind", RuleConfig{Table: "s.t", Key: "k"}, "rules[0]: kind: required"},
		{"bad kind", RuleConfig{Table: "s.t", Kind: "upsert", Key: "k"}, `rules[0]: kind "upsert": want invalidate, rewrite, mirror or member`},
		{"no table", RuleConfig{Kind: KindMirror, Key: "k:{id}", Column: "v"}, `rules[0]: table "": want schema.table`},
		{"table without schema", RuleConfig{Table: "t", Kind: KindMirror, Key: "k:{id}", Column: "v"}, `rules[0]: table "t": want schema.table`},
		{"table with 3 parts", RuleConfig{Table: "a.b.c", Kind: KindMirror, Key: "k:{id}", Column: "v"}, `rules[0]: table "a.b.c"`},
		{"empty schema", RuleConfig{Table: ".t", Kind: KindMirror, Key: "k:{id}", Column: "v"}, `rules[0]: table ".t"`},
		{"empty table", RuleConfig{Table: "s.", Kind: KindMirror, Key: "k:{id}", Column: "v"}, `rules[0]: table "s."`},

		{"invalidate without keys", RuleConfig{Table: "s.t", Kind: KindInvalidate}, "rules[0]: keys: an invalidate rule needs at least one key template"},
		{"invalidate bad key", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}", "b:{id"}}, "rules[0]: keys[1]: template \"b:{id\": unclosed"},
		{"invalidate empty key", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{""}}, "rules[0]: keys[0]: required for a invalidate rule"},
		{"invalidate with key", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Key: "b"}, "rules[0]: key: not used by a invalidate rule"},
		{"invalidate with format", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Format: "json"}, "rules[0]: format: not used by a invalidate rule"},
		{"invalidate with columns", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Columns: []string{"x"}}, "rules[0]: columns: not used"},
		{"invalidate with column", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Column: "x"}, "rules[0]: column: not used"},
		{"invalidate with member", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Member: "{id}"}, "rules[0]: member: not used"},
		{"invalidate with when", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, When: when("s", "x")}, "rules[0]: when: not used"},
		{"invalidate with op", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Op: OpRemove}, "rules[0]: op: not used by a invalidate rule"},
		{"invalidate with value", RuleConfig{Table: "s.t", Kind: KindInvalidate, Keys: []string{"a:{id}"}, Value: "{v}"}, "rules[0]: value: not used by a invalidate rule"},

		{"rewrite without key", RuleConfig{Table: "s.t", Kind: KindRewrite}, "rules[0]: key: required for a rewrite rule"},
		{"rewrite bad key", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{}"}, "rules[0]: key: template \"g:{}\": bad column reference"},
		{"rewrite bad format", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Format: "xml"}, `rules[0]: format "xml": want json or hash`},
		{"rewrite with keys", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Keys: []string{"x"}}, "rules[0]: keys: not used by a rewrite rule"},
		{"rewrite with column", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Column: "v"}, "rules[0]: column: not used by a rewrite rule"},
		{"rewrite with member", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Member: "{id}"}, "rules[0]: member: not used by a rewrite rule"},
		{"rewrite with when", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", When: when("s", "x")}, "rules[0]: when: not used by a rewrite rule"},
		{"rewrite with op", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Op: OpSync}, "rules[0]: op: not used by a rewrite rule"},
		{"rewrite with value", RuleConfig{Table: "s.t", Kind: KindRewrite, Key: "g:{id}", Value: "{v}"}, "rules[0]: value: not used by a rewrite rule"},

		{"mirror without key", RuleConfig{Table: "s.t", Kind: KindMirror, Column: "v"}, "rules[0]: key: required for a mirror rule"},
		{"mirror without column", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}"}, "rules[0]: column: required for a mirror rule"},
		{"mirror with format", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Format: "json"}, "rules[0]: format: not used by a mirror rule"},
		{"mirror with columns", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Columns: []string{"v"}}, "rules[0]: columns: not used by a mirror rule"},
		{"mirror with keys", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Keys: []string{"x"}}, "rules[0]: keys: not used by a mirror rule"},
		{"mirror with member", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Member: "x"}, "rules[0]: member: not used by a mirror rule"},
		{"mirror with when", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", When: when("s", "x")}, "rules[0]: when: not used by a mirror rule"},
		{"mirror with op", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Op: OpRemove}, "rules[0]: op: not used by a mirror rule"},
		{"mirror with value", RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v", Value: "{v}"}, "rules[0]: value: not used by a mirror rule"},

		{"member without key", RuleConfig{Table: "s.t", Kind: KindMember, Member: "{id}"}, "rules[0]: key: required for a member rule"},
		{"member without member", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set"}, "rules[0]: member: required for a member rule"},
		{"member bad member", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id"}, "rules[0]: member: template \"{id\": unclosed"},
		{"member when without column", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", When: when("", "x")}, "rules[0]: when.column: required"},
		{"member when with equals and in", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", When: when("s", "x", "y")}, "rules[0]: when: set exactly one of equals or in"},
		{"member when with neither", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", When: when("s", "")}, "rules[0]: when: set exactly one of equals or in"},
		{"member with format", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Format: "hash"}, "rules[0]: format: not used by a member rule"},
		{"member with columns", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Columns: []string{"a"}}, "rules[0]: columns: not used by a member rule"},
		{"member with column", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Column: "a"}, "rules[0]: column: not used by a member rule"},
		{"member with keys", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Keys: []string{"a"}}, "rules[0]: keys: not used by a member rule"},
		{"member bad op", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Op: "add"}, `rules[0]: op "add": want sync or remove`},
		{"member op in upper case", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Member: "{id}", Op: "Remove"}, `rules[0]: op "Remove": want sync or remove`},
		{"member bad value", RuleConfig{Table: "s.t", Kind: KindMember, Key: "h", Member: "{id}", Value: "{v"}, "rules[0]: value: template \"{v\": unclosed"},
		{"member bad value reference", RuleConfig{Table: "s.t", Kind: KindMember, Key: "h", Member: "{id}", Value: "x:{}", Op: OpRemove}, "rules[0]: value: template \"x:{}\": bad column reference"},
		{"member remove without member", RuleConfig{Table: "s.t", Kind: KindMember, Key: "set", Op: OpRemove}, "rules[0]: member: required for a member rule"},
		{"member bad key before bad op", RuleConfig{Table: "s.t", Kind: KindMember, Key: "s:{id", Member: "{id}", Op: "x"}, "rules[0]: key: template"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := CompileRules([]RuleConfig{tc.rule})
			if err == nil {
				t.Fatalf("CompileRules(%+v) = %v, want error %q", tc.rule, rs, tc.err)
			}
			if !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("error %q, want it to start with %q", err, tc.err)
			}
			// The same rule as the second one is named rules[1].
			ok := RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v"}
			_, err = CompileRules([]RuleConfig{ok, tc.rule})
			if want := strings.Replace(tc.err, "rules[0]", "rules[1]", 1); err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("as second rule: error %v, want it to start with %q", err, want)
			}
			// Config.Validate reports it under sink.
			cfg := Config{Rules: []RuleConfig{tc.rule}}
			cfg.SetDefaults()
			if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "sink."+tc.err) {
				t.Errorf("Config.Validate: %v, want it to start with %q", err, "sink."+tc.err)
			}
		})
	}
}

func TestCompileRulesGood(t *testing.T) {
	rs, err := CompileRules([]RuleConfig{
		{Table: "Shop.Goods", Kind: KindInvalidate, Keys: []string{"goods:{id}", "goods:list"}},
		{Table: "shop.goods", Kind: KindRewrite, Key: "goods:json:{id}"},
		{Table: "shop.goods", Kind: KindRewrite, Key: "goods:h:{id}", Format: "hash", Columns: []string{"id", "name"}},
		{Table: "shop.cache_only", Kind: KindInvalidate, Keys: []string{"c:{id}"}},
		{Table: "shop.stock", Kind: KindMirror, Key: "stock:{{{id}}}", Column: "stock"},
		{Table: "shop.goods", Kind: KindMember, Key: "on_sale", Member: "{id}", When: &Condition{Column: "status", Equals: "on"}},
		{Table: "shop.goods", Kind: KindMember, Key: "cat:{cat}", Member: "{id}", When: &Condition{Column: "status", In: []string{"a", "b"}}},
		{Table: "shop.goods", Kind: KindMember, Key: "all", Member: "{id}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rs.Tables(), []string{"shop.goods", "shop.cache_only", "shop.stock"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Tables() = %q, want %q (lower case, first-seen order)", got, want)
	}
	if got, want := rs.Stateful(), []string{"shop.goods", "shop.stock"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Stateful() = %q, want %q (invalidate-only tables need no snapshot)", got, want)
	}
	goods := rs.byTable["shop.goods"]
	if len(goods) != 6 {
		t.Fatalf("shop.goods has %d rules, want 6", len(goods))
	}
	if !goods[2].hash || goods[1].hash {
		t.Errorf("format hash/json not compiled: %v %v", goods[1].hash, goods[2].hash)
	}
	if got, want := goods[4].values, map[string]bool{"a": true, "b": true}; !reflect.DeepEqual(got, want) {
		t.Errorf("when.in values = %v, want %v", got, want)
	}
	if got, want := goods[3].values, map[string]bool{"on": true}; !reflect.DeepEqual(got, want) {
		t.Errorf("when.equals values = %v, want %v", got, want)
	}
	if got, want := goods[4].columns(), []string{"cat", "id", "status"}; !reflect.DeepEqual(got, want) {
		t.Errorf("columns() of the member rule = %q, want %q", got, want)
	}
}

func TestCompileMemberOpValue(t *testing.T) {
	canceled := &Condition{Column: "status", In: []string{"failed", "canceled"}}
	rs, err := CompileRules([]RuleConfig{
		{Table: "shop.orders", Kind: KindMember, Key: "sk:{{{item_id}}}:pending", Member: "{order_id}:{user_id}", Op: OpRemove},
		{Table: "shop.orders", Kind: KindMember, Key: "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "{order_id}", Op: OpSync,
			When: &Condition{Column: "status", In: []string{"created", "paid"}}},
		{Table: "shop.orders", Kind: KindMember, Key: "sk:{{{item_id}}}:buyers", Member: "{user_id}", Value: "o:{order_id}", Op: OpRemove, When: canceled},
		{Table: "shop.orders", Kind: KindMember, Key: "all", Member: "{order_id}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := rs.byTable["shop.orders"]
	for i, want := range []struct {
		remove, value bool
		name          string
		cols          []string
	}{
		{true, false, "shop.orders/member-remove:sk:{{{item_id}}}:pending", []string{"item_id", "order_id", "user_id"}},
		{false, true, "shop.orders/member:sk:{{{item_id}}}:buyers", []string{"item_id", "user_id", "order_id", "status"}},
		{true, true, "shop.orders/member-remove:sk:{{{item_id}}}:buyers", []string{"item_id", "user_id", "order_id", "status"}},
		{false, false, "shop.orders/member:all", []string{"order_id"}},
	} {
		r := got[i]
		if r.remove != want.remove || (r.value != nil) != want.value || r.name != want.name {
			t.Errorf("rules[%d]: remove %v, value %v, name %q; want %v, %v, %q", i, r.remove, r.value != nil, r.name, want.remove, want.value, want.name)
		}
		if cols := r.columns(); !reflect.DeepEqual(cols, want.cols) {
			t.Errorf("rules[%d].columns() = %q, want %q (the value's columns are checked against the schema too)", i, cols, want.cols)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	rule := RuleConfig{Table: "s.t", Kind: KindMirror, Key: "m:{id}", Column: "v"}
	var c Config
	c.Rules = []RuleConfig{rule}
	c.SetDefaults()
	if c.KeyPrefix != "cachesync:" || c.Channel != "cachesync:invalidations" || c.BatchChanges != 2000 || c.TombstoneTTL != 24*time.Hour {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of defaults: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		err  string
	}{
		{"batch too small", func(c *Config) { c.BatchChanges = -1 }, "sink.batch_changes -1"},
		{"batch too large", func(c *Config) { c.BatchChanges = 100_001 }, "sink.batch_changes 100001"},
		{"short tombstone", func(c *Config) { c.TombstoneTTL = time.Second }, "sink.tombstone_ttl 1s"},
		{"no rules", func(c *Config) { c.Rules = nil }, "sink.rules: at least one rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Rules: []RuleConfig{rule}}
			c.SetDefaults()
			tc.mod(&c)
			if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("Validate: %v, want %q", err, tc.err)
			}
		})
	}
}
