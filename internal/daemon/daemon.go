// Package daemon wires cachesync's components into one fx application, for
// the cachesync command and for tests that run the daemon in process.
package daemon

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/goods"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/seckill"
	"github.com/cachesync/cachesync/sink"
	"github.com/cenkalti/backoff/v5"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// Options are the daemon's fx options for cfg.
func Options(cfg *config.Config) fx.Option {
	return fx.Options(
		fx.Supply(cfg.MySQL, cfg.Sink, cfg.HTTP, cfg.Admin, cfg.Redis, cfg.Log, cfg.Cache, cfg.Goods, cfg.Seckill, cfg.HA),
		fx.Provide(NewLogger, newRedis, newMySQL, newApplier, newElector),
		fx.Invoke(func(log zerolog.Logger) { warnInsecureTLS(cfg, log) }),
		api.Module,
		pipeline.Module,
		cache.Module,
		goods.Module,
		seckill.Module,
	)
}

// warnInsecureTLS logs a warning for each connection whose TLS block
// turns certificate verification off (allowed, for tests).
func warnInsecureTLS(cfg *config.Config, log zerolog.Logger) {
	for _, c := range []struct {
		field string
		tls   tlsconf.Config
		used  bool
	}{
		{"mysql.tls", cfg.MySQL.TLS, true},
		{"redis.tls", cfg.Redis.TLS, true},
		{"seckill.kafka.tls", cfg.Seckill.Kafka.TLS, cfg.Seckill.Enabled},
	} {
		if c.used && c.tls.On() && c.tls.InsecureSkipVerify {
			log.Warn().Str("component", "tls").Str("field", c.field+".insecure_skip_verify").
				Msg("server certificates are not verified: the connection is encrypted but open to a man in the middle")
		}
	}
}

// NewLogger builds the logger the configuration asks for.
func NewLogger(cfg config.Log) zerolog.Logger {
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

// NewRedisClient returns a client for cfg; the caller closes it. Nothing is
// dialed before the first command.
//
// Standalone mode (also an empty Mode) connects to cfg.Addr. Sentinel mode
// returns go-redis's failover client: it asks the Sentinels at
// cfg.SentinelAddrs (authenticating with SentinelUsername/SentinelPassword)
// for the master of cfg.MasterName, dials the master with Username,
// Password and DB, and on a failover (the Sentinels' +switch-master message)
// closes its idle connections to the old master, so later commands go to
// the new one. Commands sent to the old master between its replica's
// promotion and that message are not redirected.
//
// Cluster mode returns go-redis's cluster client: it asks the seed nodes
// at cfg.Addrs for the cluster's slots and nodes, dials every node with
// Username and Password, and follows MOVED and ASK redirections. It also
// reloads the slot map every clusterReload while commands run, because
// go-redis reloads it on MOVED but not when a killed master refuses
// connections (go-redis issue 3979): with its default of 60 s, every
// command to that master's slots fails for up to a minute after its
// replica took over.
//
// A command's context deadline bounds its socket reads and writes
// (ContextTimeoutEnabled): a script call applying 64 MiB values may take
// its 30 s, a readiness ping only its second; without a deadline go-redis'
// 3 s applies.
//
// With redis.tls every connection, to the Sentinels as to the data nodes,
// is TLS. Without redis.tls.server_name, a cluster node's certificate must
// carry the host of its address as the cluster reports it (usually an
// IP). A dial error names the address ("redis HOST:PORT: …"); if the
// TLS files cannot be read (they were checked at load), every dial fails
// with that error.
func NewRedisClient(cfg config.Redis) redis.UniversalClient {
	tc, tlsErr := cfg.TLS.Client("")
	dial := redisDialer(tc, tlsErr)
	switch cfg.Mode {
	case config.RedisCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                      cfg.Addrs,
			Username:                   cfg.Username,
			Password:                   cfg.Password,
			TLSConfig:                  tc,
			Dialer:                     dial,
			ContextTimeoutEnabled:      true,
			ClusterStateReloadInterval: clusterReload,
		})
	case config.RedisSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            cfg.MasterName,
			SentinelAddrs:         cfg.SentinelAddrs,
			SentinelUsername:      cfg.SentinelUsername,
			SentinelPassword:      cfg.SentinelPassword,
			Username:              cfg.Username,
			Password:              cfg.Password,
			DB:                    cfg.DB,
			TLSConfig:             tc,
			Dialer:                dial,
			ContextTimeoutEnabled: true,
		})
	}
	return redis.NewClient(&redis.Options{Addr: cfg.Addr, Username: cfg.Username, Password: cfg.Password, DB: cfg.DB,
		TLSConfig: tc, Dialer: dial, ContextTimeoutEnabled: true})
}

// clusterReload is how old the cluster client's slot map may get while
// commands run: one CLUSTER SLOTS per second per client at most, and a
// killed master's promoted replica found within about a second of the
// first command after the promotion (0.9 s in TestRedisCluster).
const clusterReload = time.Second

// redisDialer dials like go-redis's own dialer (5 s timeout, TCP
// keep-alive), over TLS when tc is set, and names the address in errors,
// which go-redis's does not. TLS takes the server's name from the address
// unless redis.tls.server_name is set.
func redisDialer(tc *tls.Config, tlsErr error) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:         5 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3},
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if tlsErr != nil {
			return nil, fmt.Errorf("redis %s: redis.tls: %w", addr, tlsErr)
		}
		var (
			c   net.Conn
			err error
		)
		if tc != nil {
			c, err = (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, network, addr)
		} else {
			c, err = d.DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, fmt.Errorf("redis %s: %w", addr, err)
		}
		return c, nil
	}
}

func newRedis(cfg config.Redis, health *api.Health, lc fx.Lifecycle) redis.UniversalClient {
	rdb := NewRedisClient(cfg)
	lc.Append(fx.StopHook(rdb.Close))
	health.Register("redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
	return rdb
}

// OpenMySQL connects (retrying for up to the ctx deadline, except after a
// refused login or a TLS failure, which no retry cures) and checks that
// the server writes a binlog cachesync can read.
func OpenMySQL(ctx context.Context, cfg binlog.Config) (*sql.DB, binlog.ServerInfo, error) {
	dsn := mysql.NewConfig()
	dsn.User, dsn.Passwd, dsn.Net, dsn.Addr = cfg.User, cfg.Password, "tcp", cfg.Addr
	dsn.InterpolateParams = true
	var err error
	if dsn.TLS, err = cfg.SQLTLS(); err != nil {
		return nil, binlog.ServerInfo{}, err
	}
	conn, err := mysql.NewConnector(dsn) // a DSN string would drop dsn.TLS
	if err != nil {
		return nil, binlog.ServerInfo{}, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(4)
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 2 * time.Second
	var last error // the server's answer, which ctx's error would hide
	ping := func() (struct{}, error) {
		err := db.PingContext(ctx)
		if err != nil && ctx.Err() == nil {
			last = err
		}
		if why := binlog.Refused(err); why != "" {
			// A wrong password or a locked account: no retry cures it.
			return struct{}{}, backoff.Permanent(fmt.Errorf("%s: %w", why, err))
		}
		if tlsconf.Permanent(err) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}
	if _, err := backoff.Retry(ctx, ping, backoff.WithBackOff(bo)); err != nil {
		db.Close()
		if last != nil && !errors.Is(err, last) {
			err = fmt.Errorf("%w; last attempt: %w", err, last)
		}
		return nil, binlog.ServerInfo{}, fmt.Errorf("connect to mysql %s as %q: %w", cfg.Addr, cfg.User, err)
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
	db, info, err := OpenMySQL(ctx, cfg)
	if err != nil {
		return nil, info, err
	}
	lc.Append(fx.StopHook(db.Close))
	rules, err := sink.CompileRules(sc.Rules)
	if err == nil {
		err = binlog.CheckGrants(ctx, cfg, info.Flavor, db, rules.Tables())
	}
	if err == nil {
		err = rules.CheckSchema(ctx, db)
	}
	if err != nil {
		return nil, info, err
	}
	log.Info().Str("component", "mysql").Str("flavor", info.Flavor).Str("version", info.Version).Bool("tls", cfg.TLS.On()).Msg("connected")
	return db, info, nil
}

func newApplier(cfg sink.Config, rdb redis.UniversalClient, log zerolog.Logger, reg prometheus.Registerer) (*sink.Applier, error) {
	return sink.NewApplier(cfg, rdb, log.With().Str("component", "sink").Logger(), reg)
}

func newElector(cfg leader.Config, sc sink.Config, rdb redis.UniversalClient, log zerolog.Logger, reg prometheus.Registerer) *leader.Elector {
	return leader.New(cfg, rdb, sc.Keyspace(), log.With().Str("component", "leader").Logger(), reg)
}
