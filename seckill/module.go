package seckill

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/cache"
	"github.com/cachesync/cachesync/internal/tlsconf"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/cachesync/cachesync/sink"
	"github.com/cenkalti/backoff/v5"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// OpenDB opens the sale's own MySQL pool (the CDC pool is small and reads
// no timestamps): UTC, parsed times, enough connections for the consumer.
func OpenDB(ctx context.Context, mc binlog.Config) (*sql.DB, error) {
	dsn := mysql.NewConfig()
	dsn.User, dsn.Passwd, dsn.Net, dsn.Addr = mc.User, mc.Password, "tcp", mc.Addr
	dsn.ParseTime, dsn.Loc = true, time.UTC
	dsn.InterpolateParams = true
	dsn.Params = map[string]string{"time_zone": "'+00:00'"}
	var err error
	if dsn.TLS, err = mc.SQLTLS(); err != nil {
		return nil, err
	}
	conn, err := mysql.NewConnector(dsn) // a DSN string would drop dsn.TLS
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("seckill: connect to mysql %s: %w", mc.Addr, err)
	}
	return db, nil
}

// killAfterReserveEnv, set to 1, makes the process kill itself (SIGKILL)
// right after a reserve script succeeded, before its order is produced:
// the crash the outbox exists for, injected by the kill -9 tests.
const killAfterReserveEnv = "CACHESYNC_TEST_KILL_AFTER_RESERVE"

// JobsLease is the lease under which one process at a time runs the jobs
// role.
const JobsLease = "jobs"

// Params are the sale's dependencies.
type Params struct {
	fx.In
	Config     Config
	MySQL      binlog.Config
	Sink       sink.Config
	Redis      redis.UniversalClient
	Cache      *cache.Cache
	Server     *api.Server
	Health     *api.Health
	Elector    *leader.Elector
	Log        zerolog.Logger
	Registerer prometheus.Registerer
	Lifecycle  fx.Lifecycle
}

// Module runs the roles named in the configuration; nothing when the sale
// is disabled.
var Module = fx.Module("seckill", fx.Invoke(func(p Params) error {
	if !p.Config.Enabled {
		return nil
	}
	return start(p)
}))

func start(p Params) error {
	cfg := p.Config
	log := p.Log.With().Str("component", "seckill").Logger()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mc := cfg.MySQL(p.MySQL)
	db, err := OpenDB(ctx, mc)
	if err != nil {
		return err
	}
	p.Lifecycle.Append(fx.StopHook(db.Close))
	m := newMetrics(p.Registerer)
	store := NewStore(db, cfg.Database)
	if err := store.CheckGrants(ctx, &cfg, mc.User, mc.Addr); err != nil {
		return err
	}
	if _, err := retry(ctx, func() (struct{}, error) {
		err := CheckKafka(&cfg)
		if errors.Is(err, ErrKafka) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}); err != nil {
		return err
	}
	ks := p.Sink.Keyspace()
	var (
		waits []<-chan struct{}
		stop  context.CancelFunc = func() {}
	)
	var jobs *Jobs
	var jobsLease *leader.Lease
	var reserver *Reserver
	var prod *Producer
	if cfg.has(RoleAPI) || cfg.has(RoleJobs) { // jobs produce the outbox
		prod, err = retry(ctx, func() (*Producer, error) { return NewProducer(cfg.Kafka, cfg.ProduceTimeout) })
		if err != nil {
			return err
		}
		p.Lifecycle.Append(fx.StopHook(prod.Close))
	}
	if cfg.has(RoleJobs) {
		rb, err := retry(ctx, func() (*Rebuilder, error) {
			return NewRebuilder(cfg, ks, p.Sink.Channel, p.Redis, db, store, log.With().Str("role", "rebuild").Logger())
		})
		if err != nil {
			return err
		}
		p.Lifecycle.Append(fx.StopHook(rb.Close))
		jobsLease = p.Elector.Lease(JobsLease)
		p.Health.Role(JobsLease, jobsLease.Role)
		jobs = newJobs(cfg, p.Redis, store, prod, rb, NewChecker(cfg, ks, p.Redis, db, store), m, log.With().Str("role", "jobs").Logger())
	}
	if cfg.has(RoleAPI) {
		p.Health.Register("kafka", func(context.Context) error { return prod.Available() })
		so := newSoldOut(cfg.KeyPrefix, p.Cache.Live)
		p.Cache.Listen(so.invalidated)
		res := &Reserver{cfg: cfg, rdb: p.Redis, producer: prod, store: store, soldOut: so, m: m,
			log: log.With().Str("role", "api").Logger(), now: time.Now,
			batch: newCoalescer(p.Redis, reserveScript, 128, m.pipelined)}
		if os.Getenv(killAfterReserveEnv) == "1" {
			res.afterReserve = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
		}
		res.known = newKnownItems(cfg, ks, p.Redis, store, m)
		reserver = res
		if jobs != nil {
			res.kick = jobs.Kick
		}
		authn, err := auth.New(cfg.Auth)
		if err != nil {
			return err
		}
		px, err := parseProxies(cfg.TrustedProxies)
		if err != nil {
			return err
		}
		h := &Handler{cfg: cfg, res: res, store: store, rdb: p.Redis, auth: authn, proxies: px, m: m, log: res.log,
			perUser: newLimiter(cfg.Limits.PerUser, cfg.Limits.UserBurst), perIP: newLimiter(cfg.perIP(), cfg.Limits.IPBurst),
			authFails:  newLimiter(1/adminFailEvery.Seconds(), adminFailBurst),
			buyerFails: newLimiter(1/buyerFailEvery.Seconds(), buyerFailBurst)}
		h.Routes(p.Server.Public, p.Server.Admin)
		log.Info().Str("auth", cfg.Auth.Mode).Float64("per_ip", cfg.perIP()).Int("trusted_proxies", len(px)).Msg("buyers identified by " + cfg.Auth.Mode)
	}
	var cons *Consumer
	if cfg.has(RoleConsumer) {
		cons, err = retry(ctx, func() (*Consumer, error) {
			return NewConsumer(cfg, store, m, log.With().Str("role", "consumer").Logger())
		})
		if err != nil {
			return err
		}
		p.Health.Register("consumer", cons.Check)
	}
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			var runCtx context.Context
			runCtx, stop = context.WithCancel(context.Background())
			run := func(fn func(context.Context)) {
				done := make(chan struct{})
				waits = append(waits, done)
				go func() { defer close(done); fn(runCtx) }()
			}
			if cons != nil {
				run(func(ctx context.Context) { _ = cons.Run(ctx) })
			}
			if reserver != nil {
				run(func(ctx context.Context) { reserver.run(ctx, 4) })
			}
			if jobs != nil {
				run(func(ctx context.Context) { jobsLease.Run(ctx, jobs.Run) })
			}
			log.Info().Strs("roles", cfg.Roles).Strs("brokers", cfg.Kafka.Brokers).Str("topic", cfg.Kafka.Topic).Bool("kafka_tls", cfg.Kafka.TLS.On()).Msg("seckill started")
			return nil
		},
		OnStop: func(stopCtx context.Context) error {
			stop()
			var err error
			if cons != nil {
				err = cons.Close()
			}
			for _, w := range waits {
				select {
				case <-w:
				case <-stopCtx.Done():
					return stopCtx.Err()
				}
			}
			return err
		},
	})
	return nil
}

// retry builds a Kafka client, retrying while the brokers are unreachable
// (the daemon may start before them) until ctx ends; a TLS failure no
// retry cures (a certificate that does not verify) ends it at once.
func retry[T any](ctx context.Context, mk func() (T, error)) (T, error) {
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 2 * time.Second
	return backoff.Retry(ctx, func() (T, error) {
		v, err := mk()
		if tlsconf.Permanent(err) {
			return v, backoff.Permanent(err)
		}
		return v, err
	}, backoff.WithBackOff(bo))
}
