package sink

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/redis/go-redis/v9"
)

// The Redis user's permissions are checked without running a command:
// every command the daemon sends, on a key of each template and on the
// invalidation channel, and each refusal is named.
func TestCheckACL(t *testing.T) {
	srv := testenv.StartRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	ctx := context.Background()
	users := map[string][]any{
		"all":       {"~*", "&*", "+@all"},
		"narrow":    {"~goods:*", "~cachesync:*", "&cachesync:inv", "+@all", "-@dangerous"},
		"noscripts": {"~*", "&*", "+@all", "-@scripting"},
	}
	for u, perms := range users {
		args := append([]any{"ACL", "SETUSER", u, "on", ">pw"}, perms...)
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	rules, err := CompileRules([]RuleConfig{
		{Table: "shop.goods", Kind: KindRewrite, Key: "goods:{id}", Format: "json"},
		{Table: "shop.goods", Kind: KindInvalidate, Keys: []string{"list:{cat}"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	probes := rules.ACLProbes(keyspace.Keyspace{Prefix: "cachesync:"}, "cachesync:inv")
	for _, tc := range []struct {
		user    string
		refused []string // lines of the error; nil: allowed
	}{
		{"all", nil},
		{"narrow", []string{"GET list:0", "DEL list:0", "GET cachesync:v:list:0" /* allowed: under cachesync:* */, "INFO memory"}},
		{"noscripts", []string{"may not run scripts"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: tc.user, Password: "pw"})
			defer rdb.Close()
			err := CheckACL(ctx, rdb, probes)
			t.Logf("CheckACL = %v", err)
			if tc.refused == nil {
				if err != nil {
					t.Fatalf("CheckACL = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrACL) {
				t.Fatalf("CheckACL = %v, want ErrACL", err)
			}
			for _, r := range tc.refused {
				if strings.HasPrefix(r, "GET cachesync:") {
					if strings.Contains(err.Error(), "- "+r+"\n") {
						t.Errorf("refused %q, which the user may run", r)
					}
					continue
				}
				if !strings.Contains(err.Error(), r) {
					t.Errorf("error does not name %q", r)
				}
			}
			if !strings.Contains(err.Error(), `"`+tc.user+`"`) {
				t.Error("error does not name the user")
			}
		})
	}
}
