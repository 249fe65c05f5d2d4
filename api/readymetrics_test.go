package api

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// The registry api.Module gives the daemon exports cachesync_ready and
// cachesync_ready_check{check}, computed from the checks at each scrape:
// a check that starts failing shows at the next scrape without any
// /readyz request in between.
func TestReadyMetrics(t *testing.T) {
	var (
		h   *Health
		reg *prometheus.Registry
	)
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		Module, fx.Supply(Config{Listener{Addr: "127.0.0.1:0"}},
			AdminConfig{Listener: Listener{Addr: "127.0.0.1:0"}, ReadyzInterval: 10 * time.Millisecond, ReadyzTimeout: time.Second},
			zerolog.Nop()), fx.Populate(&h, &reg))
	if err := app.Err(); err != nil {
		t.Fatal(err)
	}
	var redisDown atomic.Bool
	h.Register("redis", func(context.Context) error {
		if redisDown.Load() {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	})
	h.Register("pipeline", func(context.Context) error { return nil })
	if err := app.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer app.Stop(context.Background()) //nolint:errcheck

	const head = `
# HELP cachesync_ready 1 while /readyz answers 200 (every check passes), 0 while it answers 503.
# TYPE cachesync_ready gauge
# HELP cachesync_ready_check 1 while the named readiness check passes, 0 while it fails (the reason is in /readyz).
# TYPE cachesync_ready_check gauge
`
	for _, tc := range []struct {
		down bool
		want string
	}{
		{false, `cachesync_ready 1
cachesync_ready_check{check="pipeline"} 1
cachesync_ready_check{check="redis"} 1
`},
		{true, `cachesync_ready 0
cachesync_ready_check{check="pipeline"} 1
cachesync_ready_check{check="redis"} 0
`},
		{false, `cachesync_ready 1
cachesync_ready_check{check="pipeline"} 1
cachesync_ready_check{check="redis"} 1
`},
	} {
		redisDown.Store(tc.down)
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if err = testutil.GatherAndCompare(reg, strings.NewReader(head+tc.want), "cachesync_ready", "cachesync_ready_check"); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("redis down %v: %v", tc.down, err)
		}
	}
}

// With no check registered the process is ready, as /readyz says.
func TestReadyMetricsNoChecks(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewReadyCollector(NewHealth(time.Second, time.Second)))
	if got := testutil.ToFloat64(NewReadyCollector(NewHealth(time.Second, time.Second))); got != 1 {
		t.Errorf("cachesync_ready = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "cachesync_ready_check"); err != nil || n != 0 {
		t.Errorf("cachesync_ready_check series: %d (%v), want 0", n, err)
	}
}
