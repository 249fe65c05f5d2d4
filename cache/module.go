package cache

import (
	"context"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// Module provides the read path and runs its invalidation subscriber.
var Module = fx.Module("cache",
	fx.Provide(func(cfg Config, sc sink.Config, rdb redis.UniversalClient, log zerolog.Logger, reg prometheus.Registerer, h *api.Health, lc fx.Lifecycle) (*Cache, error) {
		c, err := New(cfg, rdb, sc.Keyspace(), sc.Channel, log.With().Str("component", "cache").Logger(), reg)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		lc.Append(fx.Hook{
			OnStart: func(context.Context) error {
				go func() { defer close(done); _ = c.Run(ctx) }()
				return nil
			},
			OnStop: func(context.Context) error { cancel(); <-done; return nil },
		})
		return c, nil
	}),
)
