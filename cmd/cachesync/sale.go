package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/seckill"
	"github.com/redis/go-redis/v9"
)

var checkCommand = &command{
	name:    "check",
	summary: "compare the flash sale's Redis keys with MySQL (exit 1 on drift)",
	help: `Reads MySQL in one consistent snapshot, waits until the daemon's checkpoint
has reached it, and compares each sale item's Redis keys (stock, pending,
buyers, ready) with it. Only differences seen in every one of -rounds rounds
are reported, as a table. Exit 0 no drift, 1 drift, 2 error.
CACHESYNC_CHECK_JSON=1 also writes the result as JSON to stderr.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		items := fs.String("item", "", "item `IDS`, comma-separated (default: every item)")
		rounds := fs.Int("rounds", 3, "drift must persist across this many `ROUNDS`")
		return noArgs(c, o, func() int {
			ids, err := parseItems(*items)
			if err != nil {
				return usageError(c, o, "-item: want item ids like 7 or 7,8 (%v)", err)
			}
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			return check(cfg, ids, *rounds)
		})
	},
}

var resyncCommand = &command{
	name:    "resync",
	summary: "rebuild flash-sale items' Redis keys from MySQL, then check them",
	help: `Rebuilds each item's Redis keys (stock, pending, buyers) from one consistent
MySQL read once in-flight orders have settled and CDC has caught up, then
checks them as 'cachesync check' does. Exit 0 no drift left, 1 drift, 2 error.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		items := fs.String("item", "", "item `IDS`, comma-separated (required)")
		return noArgs(c, o, func() int {
			ids, err := parseItems(*items)
			if err == nil && len(ids) == 0 {
				err = errors.New("none given")
			}
			if err != nil {
				return usageError(c, o, "-item: want item ids like 7 or 7,8 (%v)", err)
			}
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			return resync(cfg, ids)
		})
	},
}

func parseItems(s string) ([]int64, error) {
	var ids []int64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		id, err := strconv.ParseInt(f, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// saleDeps opens what check and resync share.
func saleDeps(ctx context.Context, cfg *config.Config) (*seckill.Store, redis.UniversalClient, func(), error) {
	if !cfg.Seckill.Enabled {
		return nil, nil, nil, fmt.Errorf("seckill.enabled is false in the configuration")
	}
	db, err := seckill.OpenDB(ctx, cfg.Seckill.MySQL(cfg.MySQL))
	if err != nil {
		return nil, nil, nil, err
	}
	rdb := daemon.NewRedisClient(cfg.Redis)
	if err := rdb.Ping(ctx).Err(); err != nil {
		db.Close()
		rdb.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", describeRedis(cfg.Redis), err)
	}
	return seckill.NewStore(db, cfg.Seckill.Database), rdb, func() { db.Close(); rdb.Close() }, nil
}

// check prints the drift table; exit 0 no drift, 1 drift, 2 error.
func check(cfg *config.Config, items []int64, rounds int) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel2()
	store, rdb, closeAll, err := saleDeps(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync check:", err)
		return 2
	}
	defer closeAll()
	ck := seckill.NewChecker(cfg.Seckill, cfg.Sink.Keyspace(), rdb, store.DB(), store)
	if rounds > 0 {
		ck.Rounds = rounds
	}
	res, err := ck.Check(ctx, items)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync check:", err)
		return 2
	}
	fmt.Print(res.Format())
	if os.Getenv("CACHESYNC_CHECK_JSON") != "" {
		_ = json.NewEncoder(os.Stderr).Encode(res)
	}
	if len(res.Drift) > 0 {
		return 1
	}
	return 0
}

// resync rebuilds each item, then checks it.
func resync(cfg *config.Config, items []int64) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel2()
	store, rdb, closeAll, err := saleDeps(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync resync:", err)
		return 2
	}
	defer closeAll()
	ks := cfg.Sink.Keyspace()
	log := daemon.NewLogger(cfg.Log).With().Str("component", "resync").Logger()
	rb, err := seckill.NewRebuilder(cfg.Seckill, ks, cfg.Sink.Channel, rdb, store.DB(), store, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync resync:", err)
		return 2
	}
	defer rb.Close()
	for _, item := range items {
		if err := rb.Rebuild(ctx, item); err != nil {
			fmt.Fprintln(os.Stderr, "cachesync resync:", err)
			return 2
		}
	}
	res, err := seckill.NewChecker(cfg.Seckill, ks, rdb, store.DB(), store).Check(ctx, items)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync resync: check after rebuild:", err)
		return 2
	}
	fmt.Print(res.Format())
	if len(res.Drift) > 0 {
		return 1
	}
	return 0
}
