package sink

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrEvictionPolicy means Redis may evict any key under memory pressure:
// the checkpoint, a version or a rewrite key would vanish silently.
var ErrEvictionPolicy = fmt.Errorf("redis maxmemory-policy evicts keys cachesync needs")

// CheckEvictionPolicy reads maxmemory-policy from INFO memory (CONFIG is
// often disabled on managed Redis). noeviction is right: writes fail
// loudly when memory is full and are retried. A volatile-* policy only
// evicts keys with a TTL: cachesync's checkpoint, versions and rewrite,
// mirror and member keys have none, but its tombstones and the
// application's cache entries may go early; that is returned as a warning.
// An allkeys-* policy is refused (ErrEvictionPolicy).
//
// On a Redis Cluster every node is read (INFO goes to one node only), the
// replicas too, since a replica becomes a master on failover; an error
// names the node.
func CheckEvictionPolicy(ctx context.Context, rdb redis.UniversalClient) (warning string, err error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return checkEvictionPolicy(ctx, rdb)
	}
	var mu sync.Mutex
	err = cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
		w, err := checkEvictionPolicy(ctx, c)
		if err != nil {
			return fmt.Errorf("node %s: %w", c.Options().Addr, err)
		}
		if w != "" {
			mu.Lock()
			warning = "node " + c.Options().Addr + ": " + w
			mu.Unlock()
		}
		return nil
	})
	return warning, err
}

func checkEvictionPolicy(ctx context.Context, rdb redis.Cmdable) (warning string, err error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return "", fmt.Errorf("read redis INFO memory: %w", err)
	}
	policy := ""
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "maxmemory_policy:"); ok {
			policy = v
		}
	}
	switch {
	case policy == "" || policy == "noeviction":
		return "", nil
	case strings.HasPrefix(policy, "volatile-"):
		return fmt.Sprintf("redis maxmemory-policy is %s: keys with a TTL may be evicted when memory is full (cachesync's delete tombstones, which keep an older replayed value from coming back, and your cache entries); noeviction is safest", policy), nil
	default:
		return "", fmt.Errorf("%w: maxmemory-policy is %s, which may evict the checkpoint, the version keys and the keys the rules write, silently; set it to noeviction (or a volatile-* policy)", ErrEvictionPolicy, policy)
	}
}
