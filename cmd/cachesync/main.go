// Command cachesync keeps Redis coherent with MySQL by tailing the binlog.
//
//	cachesync [run] -config FILE     run the daemon
//	cachesync validate -config FILE  check the file, the server and the rules
//	cachesync check [-item ID,...]   compare the sale's Redis keys with MySQL (exit 1 on drift)
//	cachesync resync -item ID        rebuild an item's Redis keys from MySQL
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/sink"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("cachesync "+cmd, flag.ContinueOnError)
	path := fs.String("config", "configs/cachesync.yaml", "configuration file")
	items := fs.String("item", "", "check, resync: item id(s), comma-separated (check: all items when empty)")
	rounds := fs.Int("rounds", 3, "check: drift must persist across this many rounds")
	table := fs.String("table", "", "snapshot: the table (schema.table) to snapshot again")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path, os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync:", err)
		return 2
	}
	switch cmd {
	case "run":
		return runDaemon(cfg)
	case "validate":
		return validate(cfg)
	case "check", "resync":
		ids, err := parseItems(*items)
		if err != nil || (cmd == "resync" && len(ids) == 0) {
			fmt.Fprintf(os.Stderr, "cachesync %s: -item: want item ids like 7 or 7,8 (%v)\n", cmd, err)
			return 2
		}
		if cmd == "check" {
			return check(cfg, ids, *rounds)
		}
		return resync(cfg, ids)
	case "snapshot":
		if *table == "" {
			fmt.Fprintln(os.Stderr, "cachesync snapshot: -table schema.table is required")
			return 2
		}
		return requestSnapshot(cfg, *table)
	default:
		fmt.Fprintf(os.Stderr, "cachesync: unknown command %q (want run, validate, check, resync or snapshot)\n", cmd)
		return 2
	}
}

// runDaemon runs until SIGINT/SIGTERM (exit 0) or a fatal pipeline error (1).
func runDaemon(cfg *config.Config) int {
	app := fx.New(
		fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		daemon.Options(cfg),
	)
	log := daemon.NewLogger(cfg.Log)
	if err := app.Err(); err != nil {
		log.Error().Err(err).Msg("start-up failed")
		return 1
	}
	startCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		log.Error().Err(err).Msg("start-up failed")
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
	if err == nil {
		defer db.Close()
		var rules *sink.Rules
		if rules, err = sink.CompileRules(cfg.Sink.Rules); err == nil {
			err = rules.CheckSchema(ctx, db)
		}
	}
	var reached string
	if err == nil {
		rdb := daemon.NewRedisClient(cfg.Redis)
		defer rdb.Close()
		if reached, err = redisReached(ctx, rdb, cfg.Redis); err == nil {
			var warning string
			if warning, err = sink.CheckEvictionPolicy(ctx, rdb); warning != "" {
				fmt.Fprintln(os.Stderr, "cachesync: warning:", warning)
			}
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", describeRedis(cfg.Redis), err)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync:", err)
		return 1
	}
	fmt.Printf("ok: %s %s, %d rules; %s\n", info.Flavor, info.Version, len(cfg.Sink.Rules), reached)
	return 0
}

// describeRedis names the Redis that cfg configures, for messages.
func describeRedis(cfg config.Redis) string {
	if cfg.Mode == config.RedisSentinel {
		return fmt.Sprintf("redis sentinel master %q (sentinels %s)", cfg.MasterName, strings.Join(cfg.SentinelAddrs, ","))
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
	if cfg.Mode != config.RedisSentinel {
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
