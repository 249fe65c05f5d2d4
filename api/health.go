package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Health runs the components' readiness checks in the background, each on
// its own every interval and bounded by timeout, and answers /readyz from
// their last results: a probe never waits for a check, so a hung backend
// makes /readyz say so at once instead of hanging it.
type Health struct {
	interval, timeout time.Duration

	mu     sync.Mutex
	checks map[string]*check
	roles  map[string]func() string

	stop context.CancelFunc
	done chan struct{} // closed when the loop has returned
	runs sync.WaitGroup
}

// check is one registered check and its last outcome.
type check struct {
	fn      func(context.Context) error
	running bool      // a run is in flight
	started time.Time // of the run in flight
	ran     bool      // a run has finished
	err     error     // of the last finished run
	at      time.Time // when the last run finished
}

// Result is a check's state as /readyz reports it.
type Result struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// AgeSeconds is how old the result is: since the last run finished,
	// or, for a run past its timeout, since it started.
	AgeSeconds float64 `json:"age_seconds"`
}

// NewHealth returns an empty Health whose checks run every interval, each
// bounded by timeout, once Start is called.
func NewHealth(interval, timeout time.Duration) *Health {
	return &Health{
		interval: interval, timeout: timeout,
		checks: make(map[string]*check), roles: make(map[string]func() string),
	}
}

// Role adds a named role to /readyz's answer ("cdc": "leader" or
// "standby"), so that a probe tells the leader from a standby; a role is
// never a failure. Unlike checks, roles are read on every request: role
// must answer at once from memory.
func (h *Health) Role(name string, role func() string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.roles[name] = role
}

// Roles returns every role by name.
func (h *Health) Roles() map[string]string {
	h.mu.Lock()
	roles := make(map[string]func() string, len(h.roles))
	for name, role := range h.roles {
		roles[name] = role
	}
	h.mu.Unlock()
	out := make(map[string]string, len(roles))
	for name, role := range roles {
		out[name] = role()
	}
	return out
}

// Register adds a named check; nil from the check means ready. The check
// runs in the background with a context that ends after the timeout; it
// should return then. One that does not is reported as timed out, and is
// not started again until it returns.
func (h *Health) Register(name string, fn func(context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = &check{fn: fn}
}

// Start runs the checks now and then every interval until Stop.
func (h *Health) Start(context.Context) error {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		t := time.NewTicker(h.interval)
		defer t.Stop()
		for {
			h.runDue(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Stop ends the loop, cancels the runs in flight and waits for them until
// ctx ends; a check that ignores its context is named in the error.
func (h *Health) Stop(ctx context.Context) error {
	if h.stop == nil {
		return nil
	}
	h.stop()
	<-h.done
	all := make(chan struct{})
	go func() { h.runs.Wait(); close(all) }()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var hung []string
	for name, c := range h.checks {
		if c.running {
			hung = append(hung, name)
		}
	}
	return fmt.Errorf("health: checks %v still running at stop", hung)
}

// runDue starts a run of every check that has none in flight.
func (h *Health) runDue(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.checks {
		if c.running {
			continue
		}
		c.running, c.started = true, time.Now()
		h.runs.Go(func() {
			err := h.runOne(ctx, c.fn)
			h.mu.Lock()
			defer h.mu.Unlock()
			c.running, c.ran, c.at = false, true, time.Now()
			c.err = err
			if took := c.at.Sub(c.started); err == nil && took > h.timeout {
				c.err = fmt.Errorf("timed out after %s (answered after %s)", h.timeout, took.Round(time.Millisecond))
			}
		})
	}
}

// runOne runs fn with the timeout, turning a panic into an error.
func (h *Health) runOne(ctx context.Context, fn func(context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("check panicked: %v", p)
		}
	}()
	err = fn(ctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", h.timeout, err)
	}
	return err
}

// Results returns every check's state now, without running any.
func (h *Health) Results() map[string]Result {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	out := make(map[string]Result, len(h.checks))
	for name, c := range h.checks {
		var r Result
		switch {
		case c.running && now.Sub(c.started) > h.timeout:
			r = Result{Error: fmt.Sprintf("timed out after %s", h.timeout), AgeSeconds: seconds(now.Sub(c.started))}
		case c.ran && c.err != nil:
			r = Result{Error: c.err.Error(), AgeSeconds: seconds(now.Sub(c.at))}
		case c.ran:
			r = Result{OK: true, AgeSeconds: seconds(now.Sub(c.at))}
		default:
			r = Result{Error: "not checked yet"}
		}
		out[name] = r
	}
	return out
}

// Ready returns the failing checks by name, from their last results.
func (h *Health) Ready() map[string]string {
	failed := map[string]string{}
	for name, r := range h.Results() {
		if !r.OK {
			failed[name] = r.Error
		}
	}
	return failed
}

func seconds(d time.Duration) float64 { return d.Round(time.Millisecond).Seconds() }

// serveReady answers 200 when every check's last result passed, else 503,
// with {"ready", "failing": {name: error}, "roles", "checks": {name: Result}}.
func (h *Health) serveReady(w http.ResponseWriter, _ *http.Request) {
	results := h.Results()
	failed := map[string]string{}
	for name, r := range results {
		if !r.OK {
			failed[name] = r.Error
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": len(failed) == 0, "failing": failed, "roles": h.Roles(), "checks": results})
}
