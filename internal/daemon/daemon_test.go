package daemon

import (
	"testing"

	"github.com/cachesync/cachesync/config"
	"github.com/redis/go-redis/v9"
)

// NewRedisClient picks the client by mode and hands the data node's
// credentials and DB to either. (That the failover client asks the
// Sentinels is tested against real ones in cmd/cachesync.)
func TestNewRedisClient(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      config.Redis
		wantAddr string
	}{
		{"standalone", config.Redis{Mode: "standalone", Addr: "10.0.0.1:6380", Username: "u", Password: "p", DB: 3}, "10.0.0.1:6380"},
		{"empty mode is standalone", config.Redis{Addr: "10.0.0.1:6380", Username: "u", Password: "p", DB: 3}, "10.0.0.1:6380"},
		{"sentinel", config.Redis{Mode: "sentinel", MasterName: "m", SentinelAddrs: []string{"10.0.0.2:26379"}, Username: "u", Password: "p", DB: 3}, "FailoverClient"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := NewRedisClient(tc.cfg)
			defer rdb.Close()
			c, ok := rdb.(*redis.Client)
			if !ok {
				t.Fatalf("NewRedisClient returned %T, want *redis.Client", rdb)
			}
			o := c.Options()
			if o.Addr != tc.wantAddr || o.Username != "u" || o.Password != "p" || o.DB != 3 {
				t.Errorf("options: addr %q, username %q, password %q, db %d; want %q, u, p, 3", o.Addr, o.Username, o.Password, o.DB, tc.wantAddr)
			}
		})
	}
}
