// Command cachesync keeps Redis coherent with MySQL by tailing the binlog.
// `cachesync help` lists its commands (see commands in cli.go); each has
// its own flags and `cachesync <command> -h`.
//
//	cachesync [run] -config FILE       run the daemon
//	cachesync validate -config FILE    check the file, the server and the rules
//	cachesync snapshot -table S.T      ask the leader to snapshot a table again
//	cachesync check [-item ID,...]     compare the sale's Redis keys with MySQL (exit 1 on drift)
//	cachesync resync -item ID          rebuild an item's Redis keys from MySQL
//	cachesync position show|set        the stored binlog checkpoint
//	cachesync token -user ID           a buyer's JWT (HMAC secret of the configuration)
//	cachesync version                  build information
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/seckill"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/dig"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

func main() {
	os.Exit(run(os.Args[1:], &stdio{out: os.Stdout, err: os.Stderr}))
}

var runCommand = &command{
	name:    "run",
	summary: "run the daemon (the default command)",
	help: `Runs the daemon: streams the binlog into Redis while it holds the CDC lease
(stands by otherwise), serves the HTTP endpoints and, with seckill.enabled,
the flash sale. It runs until SIGTERM or SIGINT (exit 0, the lease released)
or a fatal error (exit 1).`,
	setup: configOnly(func(_ *command, _ *stdio, cfg *config.Config) int { return runDaemon(cfg) }),
}

var validateCommand = &command{
	name:    "validate",
	summary: "check the configuration against the live servers and the rules",
	help: `Loads the configuration, connects to MySQL (binlog settings, every rule's
table and columns) and to Redis (eviction policy; in sentinel mode, the master
the Sentinels name), and prints what it reached. Exit 1 when a check fails.`,
	setup: configOnly(func(_ *command, _ *stdio, cfg *config.Config) int { return validate(cfg) }),
}

var snapshotCommand = &command{
	name:    "snapshot",
	summary: "ask the leader to snapshot a table again",
	help: `Asks the CDC leader to snapshot TABLE (schema.table, read by a rewrite, mirror
or member rule) again from its first row, beside the stream: after a rule
change, or to repair its keys. The leader starts within seconds; /readyz says
snapshotting until it is done.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		table := fs.String("table", "", "the `TABLE` (schema.table) to snapshot again (required)")
		return noArgs(c, o, func() int {
			if *table == "" {
				return usageError(c, o, "-table schema.table is required")
			}
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			return requestSnapshot(cfg, *table)
		})
	},
}

// runDaemon runs until SIGINT/SIGTERM (exit 0) or a fatal pipeline error (1).
func runDaemon(cfg *config.Config) int {
	gc, _ := daemon.TuneGC(cfg.Runtime, os.LookupEnv)
	if !slices.Contains(gc.FromEnv, "GOMEMLIMIT") {
		follow, stopFollowing := context.WithCancel(context.Background())
		defer stopFollowing()
		go daemon.FollowLiveHeap(follow, gc.Limit, time.Second)
	}
	app := fx.New(
		fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		daemon.Options(cfg),
	)
	log := daemon.NewLogger(cfg.Log)
	daemon.RouteDriverLogs(log)
	ev := log.Info().Str("component", "runtime").Int("gc_percent", gc.Percent).Strs("from_environment", gc.FromEnv)
	if gc.Limit != daemon.NoLimit {
		ev = ev.Int64("memory_limit", gc.Limit)
	}
	ev.Msg("garbage collector set")
	if err := app.Err(); err != nil {
		startupFailed(log, err)
		return 1
	}
	startCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		startupFailed(log, err)
		return 1
	}
	sig := <-app.Wait()
	stopCtx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if err := app.Stop(stopCtx); err != nil {
		log.Error().Err(err).Msg("shutdown")
		return 1
	}
	log.Info().Int("exit", sig.ExitCode).Msg("stopped")
	return sig.ExitCode
}

// startupFailed logs why the daemon could not start: the root cause
// first, fx's wiring path (which constructor failed, through which
// dependencies) after it, at debug level.
func startupFailed(log zerolog.Logger, err error) {
	log.Error().AnErr("error", dig.RootCause(err)).Msg("start-up failed")
	log.Debug().Str("wiring", err.Error()).Msg("start-up failed: wiring")
}

// requestSnapshot asks the leader to snapshot table again (see
// sink.Applier.RequestSnapshot).
func requestSnapshot(cfg *config.Config, table string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := daemon.NewRedisClient(cfg.Redis)
	defer rdb.Close()
	a, err := sink.NewApplier(cfg.Sink, rdb, zerolog.Nop(), nil)
	if err == nil {
		err = a.RequestSnapshot(ctx, table)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync snapshot:", err)
		return 1
	}
	fmt.Printf("ok: snapshot of %s requested; the leader starts it within seconds (progress in %ssnapshot:progress, /readyz says snapshotting meanwhile)\n", strings.ToLower(table), cfg.Sink.KeyPrefix)
	return 0
}

// validate checks the configuration against the live servers.
func validate(cfg *config.Config) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, info, err := daemon.OpenMySQL(ctx, cfg.MySQL)
	var rules *sink.Rules
	if err == nil {
		defer db.Close()
		if rules, err = sink.CompileRules(cfg.Sink.Rules); err == nil {
			err = binlog.CheckGrants(ctx, cfg.MySQL, info.Flavor, db, rules.Tables())
		}
		if err == nil {
			err = rules.CheckSchema(ctx, db)
		}
		if err == nil && cfg.Seckill.Enabled {
			err = checkSaleGrants(ctx, cfg)
		}
		if err == nil && cfg.Seckill.Enabled {
			err = seckill.CheckKafka(&cfg.Seckill)
		}
	}
	var reached string
	if err == nil {
		rdb := daemon.NewRedisClient(cfg.Redis)
		defer rdb.Close()
		// The sink the daemon would run: what it refuses, validate refuses.
		var a *sink.Applier
		if a, err = sink.NewApplier(cfg.Sink, rdb, zerolog.Nop(), nil); err == nil {
			if reached, err = redisReached(ctx, rdb, cfg.Redis); err == nil {
				var warnings []string
				warnings, err = a.CheckRedis(ctx)
				for _, w := range warnings {
					fmt.Fprintln(os.Stderr, "cachesync: warning:", w)
				}
				if err == nil {
					err = a.RegisterSource(ctx, false)
				}
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", describeRedis(cfg.Redis), err)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync:", err)
		return 1
	}
	fmt.Printf("ok: %s %s, %d rules; %s\n", info.Flavor, info.Version, len(cfg.Sink.Rules), reached)
	return 0
}

// checkSaleGrants checks the sale's account (seckill.mysql, else
// mysql.user) on its own pool.
func checkSaleGrants(ctx context.Context, cfg *config.Config) error {
	mc := cfg.Seckill.MySQL(cfg.MySQL)
	db, err := seckill.OpenDB(ctx, mc)
	if err != nil {
		return err
	}
	defer db.Close()
	return seckill.NewStore(db, cfg.Seckill.Database).CheckGrants(ctx, &cfg.Seckill, mc.User, mc.Addr)
}

// describeRedis names the Redis that cfg configures, for messages.
func describeRedis(cfg config.Redis) string {
	switch cfg.Mode {
	case config.RedisSentinel:
		return fmt.Sprintf("redis sentinel master %q (sentinels %s)", cfg.MasterName, strings.Join(cfg.SentinelAddrs, ","))
	case config.RedisCluster:
		return "redis cluster (seeds " + strings.Join(cfg.Addrs, ",") + ")"
	}
	return "redis " + cfg.Addr
}

// redisReached pings rdb and says which server answered: in sentinel mode,
// the address of the master the Sentinels named (the server's side of the
// connection, from CLIENT INFO) and that it answers ROLE as master.
func redisReached(ctx context.Context, rdb redis.UniversalClient, cfg config.Redis) (string, error) {
	if err := rdb.Ping(ctx).Err(); err != nil {
		return "", err
	}
	switch cfg.Mode {
	case config.RedisCluster:
		return describeRedis(cfg), nil
	case config.RedisSentinel:
	default:
		return "redis standalone " + cfg.Addr, nil
	}
	ci, err := rdb.ClientInfo(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("client info: %w", err)
	}
	role, err := rdb.Do(ctx, "ROLE").Slice()
	if err != nil {
		return "", fmt.Errorf("role: %w", err)
	}
	if len(role) == 0 {
		return "", errors.New("role: empty answer")
	}
	if role[0] != "master" {
		return "", fmt.Errorf("the Sentinels named %s as master, but it answers ROLE %v", ci.LAddr, role[0])
	}
	return fmt.Sprintf("redis sentinel master %q at %s", cfg.MasterName, ci.LAddr), nil
}
