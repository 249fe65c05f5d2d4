// Package api serves cachesync's HTTP endpoints: Prometheus metrics,
// liveness and readiness.
package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// Server is the HTTP server. Components add routes to Mux before start.
type Server struct {
	Mux  *http.ServeMux
	srv  *http.Server
	log  zerolog.Logger
	addr net.Addr
}

// NewServer builds the server with /metrics, /healthz and /readyz.
func NewServer(cfg Config, health *Health, gatherer prometheus.Gatherer, log zerolog.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", health.serveReady)
	return &Server{
		Mux: mux,
		log: log,
		srv: &http.Server{Addr: cfg.Addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second},
	}
}

// Start listens (a bind error fails start-up) and serves in the background.
func (s *Server) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", s.srv.Addr, err)
	}
	s.addr = ln.Addr()
	s.log.Info().Str("addr", ln.Addr().String()).Msg("http listening")
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("http serve")
		}
	}()
	return nil
}

// Addr is the bound address (after Start).
func (s *Server) Addr() net.Addr { return s.addr }

// Stop shuts the server down gracefully within ctx.
func (s *Server) Stop(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Module provides the HTTP server, health registry and metrics registry.
var Module = fx.Module("api",
	fx.Provide(
		NewHealth,
		func() *prometheus.Registry {
			reg := prometheus.NewRegistry()
			reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
			return reg
		},
		func(r *prometheus.Registry) prometheus.Registerer { return r },
		func(cfg Config, h *Health, reg *prometheus.Registry, log zerolog.Logger, lc fx.Lifecycle) *Server {
			s := NewServer(cfg, h, reg, log.With().Str("component", "api").Logger())
			lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
			return s
		},
	),
	fx.Invoke(func(*Server) {}), // serve even though no component asks for the server
	fx.Invoke(registerReady),
)
