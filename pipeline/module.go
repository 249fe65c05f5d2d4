package pipeline

import (
	"context"
	"database/sql"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// Params are the pipeline's dependencies.
type Params struct {
	fx.In
	Config     binlog.Config
	Sink       sink.Config
	Server     binlog.ServerInfo
	DB         *sql.DB
	Applier    *sink.Applier
	Elector    *leader.Elector
	Log        zerolog.Logger
	Registerer prometheus.Registerer
	Health     *api.Health
	Lifecycle  fx.Lifecycle
	Shutdowner fx.Shutdowner
}

// LeaseName is the lease the CDC writer holds.
const LeaseName = "cdc"

// Module runs the pipeline for the lifetime of the app. A fatal pipeline
// error is logged and shuts the app down with exit code 1.
var Module = fx.Module("pipeline",
	fx.Provide(func(p Params) *Pipeline {
		flavor := p.Config.Flavor
		if flavor == "auto" {
			flavor = p.Server.Flavor
		}
		log := p.Log.With().Str("component", "pipeline").Logger()
		pl := New(p.Config, flavor, p.DB, p.Applier, p.Elector.Lease(LeaseName), p.Sink.BatchChanges, p.Log, p.Registerer)
		p.Health.Register("pipeline", func(context.Context) error { return pl.Ready() })
		p.Health.Role(LeaseName, pl.Role)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		p.Lifecycle.Append(fx.Hook{
			OnStart: func(context.Context) error {
				go func() {
					defer close(done)
					if err := pl.Run(ctx); err != nil {
						log.Error().Err(err).Msg("pipeline stopped")
						_ = p.Shutdowner.Shutdown(fx.ExitCode(1))
					}
				}()
				return nil
			},
			OnStop: func(stopCtx context.Context) error {
				cancel()
				select {
				case <-done:
					return nil
				case <-stopCtx.Done():
					return stopCtx.Err()
				case <-time.After(time.Minute):
					return nil
				}
			},
		})
		return pl
	}),
	fx.Invoke(func(*Pipeline) {}),
)
