// Command cachesync keeps Redis coherent with MySQL by tailing the binlog.
//
//	cachesync [run] -config FILE     run the daemon
//	cachesync validate -config FILE  check the file, the server and the rules
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/goods"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	"github.com/cenkalti/backoff/v4"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
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
		return daemon(cfg)
	case "validate":
		return validate(cfg)
	default:
		fmt.Fprintf(os.Stderr, "cachesync: unknown command %q (want run or validate)\n", cmd)
		return 2
	}
}

// daemon runs until SIGINT/SIGTERM (exit 0) or a fatal pipeline error (1).
func daemon(cfg *config.Config) int {
	app := fx.New(
		fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		fx.Supply(cfg.MySQL, cfg.Sink, cfg.HTTP, cfg.Redis, cfg.Log, cfg.Cache, cfg.Goods),
		fx.Provide(newLogger, newRedis, newMySQL, newApplier),
		api.Module,
		pipeline.Module,
		cache.Module,
		goods.Module,
	)
	log := newLogger(cfg.Log)
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

// validate checks the configuration against the live servers.
func validate(cfg *config.Config) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, info, err := openMySQL(ctx, cfg.MySQL)
	if err == nil {
		defer db.Close()
		var rules *sink.Rules
		if rules, err = sink.CompileRules(cfg.Sink.Rules); err == nil {
			err = rules.CheckSchema(ctx, db)
		}
	}
	if err == nil {
		rdb := redis.NewClient(redisOptions(cfg.Redis))
		defer rdb.Close()
		err = rdb.Ping(ctx).Err()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cachesync:", err)
		return 1
	}
	fmt.Printf("ok: %s %s, %d rules\n", info.Flavor, info.Version, len(cfg.Sink.Rules))
	return 0
}

func newLogger(cfg config.Log) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(strings.ToLower(cfg.Level))
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	var log zerolog.Logger
	if cfg.Format == "console" {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	} else {
		log = zerolog.New(os.Stderr)
	}
	return log.Level(lvl).With().Timestamp().Logger()
}

func redisOptions(cfg config.Redis) *redis.Options {
	return &redis.Options{Addr: cfg.Addr, Username: cfg.Username, Password: cfg.Password, DB: cfg.DB}
}

func newRedis(cfg config.Redis, health *api.Health, lc fx.Lifecycle) redis.UniversalClient {
	rdb := redis.NewClient(redisOptions(cfg))
	lc.Append(fx.StopHook(rdb.Close))
	health.Register("redis", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err()
	})
	return rdb
}

// openMySQL connects (retrying for up to the ctx deadline) and checks that
// the server writes a binlog cachesync can read.
func openMySQL(ctx context.Context, cfg binlog.Config) (*sql.DB, binlog.ServerInfo, error) {
	dsn := mysql.NewConfig()
	dsn.User, dsn.Passwd, dsn.Net, dsn.Addr = cfg.User, cfg.Password, "tcp", cfg.Addr
	dsn.InterpolateParams = true
	db, err := sql.Open("mysql", dsn.FormatDSN())
	if err != nil {
		return nil, binlog.ServerInfo{}, err
	}
	db.SetMaxOpenConns(4)
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 2 * time.Second
	if err := backoff.Retry(func() error { return db.PingContext(ctx) }, backoff.WithContext(bo, ctx)); err != nil {
		db.Close()
		return nil, binlog.ServerInfo{}, fmt.Errorf("connect to mysql %s: %w", cfg.Addr, err)
	}
	info, err := binlog.CheckServer(ctx, db)
	if err != nil {
		db.Close()
		return nil, info, err
	}
	return db, info, nil
}

func newMySQL(cfg binlog.Config, sc sink.Config, log zerolog.Logger, lc fx.Lifecycle) (*sql.DB, binlog.ServerInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, info, err := openMySQL(ctx, cfg)
	if err != nil {
		return nil, info, err
	}
	lc.Append(fx.StopHook(db.Close))
	rules, err := sink.CompileRules(sc.Rules)
	if err == nil {
		err = rules.CheckSchema(ctx, db)
	}
	if err != nil {
		return nil, info, err
	}
	log.Info().Str("component", "mysql").Str("flavor", info.Flavor).Str("version", info.Version).Msg("connected")
	return db, info, nil
}

func newApplier(cfg sink.Config, rdb redis.UniversalClient, log zerolog.Logger, reg prometheus.Registerer) (*sink.Applier, error) {
	return sink.NewApplier(cfg, rdb, log.With().Str("component", "sink").Logger(), reg)
}
