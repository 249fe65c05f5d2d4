// Package api serves cachesync's HTTP endpoints on two listeners: the
// public one (http.addr) for the endpoints clients call, and the admin one
// (admin.addr, loopback by default) for metrics, liveness, readiness,
// profiling and the admin endpoints. Both bound their reads, writes, idle
// connections, headers and open connections.
package api

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
	"golang.org/x/net/netutil"
)

// Server is the two HTTP listeners. Components add routes to Public or
// Admin before start.
type Server struct {
	// Public serves the endpoints clients call (goods, the sale).
	Public *http.ServeMux
	// Admin serves operators: /metrics, /livez (and its alias /healthz),
	// /readyz, /openapi.json, /debug/pprof/ and the components' /admin/
	// endpoints.
	Admin *http.ServeMux

	public, admin *listener
	open          *prometheus.GaugeVec // open connections by listener
}

// listener is one http.Server and its limits.
type listener struct {
	name string // "http" or "admin": the config section, in logs
	cfg  Listener
	srv  *http.Server
	ln   net.Listener
	log  zerolog.Logger
}

// NewServer builds both listeners; the admin one already serves /metrics
// (from gatherer), /livez, /healthz, /readyz (from health), /openapi.json
// and /debug/pprof/. Open connections are counted on reg.
func NewServer(cfg Config, admin AdminConfig, health *Health, gatherer prometheus.Gatherer, reg prometheus.Registerer, log zerolog.Logger) (*Server, error) {
	open := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "cachesync", Subsystem: "http", Name: "open_connections",
		Help: "Open connections of each HTTP listener (public, admin); at its max_conns, new ones wait to be accepted.",
	}, []string{"listener"})
	if err := reg.Register(open); err != nil {
		return nil, err
	}
	s := &Server{Public: http.NewServeMux(), Admin: http.NewServeMux(), open: open}
	live := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) }
	s.Admin.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	s.Admin.HandleFunc("GET /livez", live)
	s.Admin.HandleFunc("GET /healthz", live) // the name before /livez, kept for existing probes
	s.Admin.HandleFunc("GET /readyz", health.serveReady)
	s.Admin.HandleFunc("GET /openapi.json", serveOpenAPI)
	// pprof's profile and trace extend their own write deadline by their
	// ?seconds, so admin.write_timeout does not cut them short.
	s.Admin.HandleFunc("/debug/pprof/", pprof.Index)
	s.Admin.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.Admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.Admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.Admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.public = newListener("http", cfg.Listener, s.Public, open.WithLabelValues("public"), log)
	s.admin = newListener("admin", admin.Listener, s.Admin, open.WithLabelValues("admin"), log)
	return s, nil
}

func newListener(name string, cfg Listener, mux *http.ServeMux, open prometheus.Gauge, log zerolog.Logger) *listener {
	log = log.With().Str("listener", name).Logger()
	return &listener{name: name, cfg: cfg, log: log, srv: &http.Server{
		Addr:              cfg.Addr,
		Handler:           WithRequestID(jsonUnrouted(mux)),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				open.Inc()
			case http.StateClosed, http.StateHijacked:
				open.Dec()
			}
		},
		ErrorLog: stdlog.New(errorLog{log}, "", 0),
	}}
}

// errorLog puts net/http's own messages (accept errors, panics in
// handlers) into the JSON log instead of plain lines on stderr.
type errorLog struct{ log zerolog.Logger }

func (e errorLog) Write(p []byte) (int, error) {
	e.log.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// listen binds the address, bounded to max_conns open connections, and
// loads the TLS files of an HTTPS listener.
func (l *listener) listen() error {
	tc, err := l.cfg.TLS.Config()
	if err != nil {
		return fmt.Errorf("%s.tls: %w", l.name, err)
	}
	l.srv.TLSConfig = tc
	ln, err := net.Listen("tcp", l.srv.Addr)
	if err != nil {
		return fmt.Errorf("%s listen %s: %w", l.name, l.srv.Addr, err)
	}
	l.ln = netutil.LimitListener(ln, l.cfg.MaxConns)
	return nil
}

func (l *listener) serve() {
	l.log.Info().Str("addr", l.ln.Addr().String()).Int("max_conns", l.cfg.MaxConns).Bool("tls", l.srv.TLSConfig != nil).Msg(l.name + " listening")
	go func() {
		var err error
		if l.srv.TLSConfig != nil {
			err = l.srv.ServeTLS(l.ln, "", "") // the certificate is in TLSConfig
		} else {
			err = l.srv.Serve(l.ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error().Err(err).Msg(l.name + " serve")
		}
	}()
}

// Start binds both listeners (a bind error fails start-up) and serves in
// the background.
func (s *Server) Start(context.Context) error {
	if err := s.public.listen(); err != nil {
		return err
	}
	if err := s.admin.listen(); err != nil {
		_ = s.public.ln.Close()
		return err
	}
	s.public.serve()
	s.admin.serve()
	return nil
}

// PublicAddr is the public listener's bound address (after Start).
func (s *Server) PublicAddr() net.Addr { return s.public.ln.Addr() }

// AdminAddr is the admin listener's bound address (after Start).
func (s *Server) AdminAddr() net.Addr { return s.admin.ln.Addr() }

// Stop shuts both listeners down gracefully within ctx.
func (s *Server) Stop(ctx context.Context) error {
	return errors.Join(s.public.srv.Shutdown(ctx), s.admin.srv.Shutdown(ctx))
}

// Module provides the HTTP server, health registry and metrics registry.
var Module = fx.Module("api",
	fx.Provide(
		func(cfg AdminConfig, lc fx.Lifecycle) *Health {
			h := NewHealth(cfg.ReadyzInterval, cfg.ReadyzTimeout)
			lc.Append(fx.Hook{OnStart: h.Start, OnStop: h.Stop})
			return h
		},
		func() *prometheus.Registry {
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			return reg
		},
		func(r *prometheus.Registry) prometheus.Registerer { return r },
		func(cfg Config, admin AdminConfig, h *Health, reg *prometheus.Registry, log zerolog.Logger, lc fx.Lifecycle) (*Server, error) {
			s, err := NewServer(cfg, admin, h, reg, reg, log.With().Str("component", "api").Logger())
			if err != nil {
				return nil, err
			}
			lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
			return s, nil
		},
	),
	fx.Invoke(func(*Server) {}), // serve even though no component asks for the server
	fx.Invoke(registerReady),
)
