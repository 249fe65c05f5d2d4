package api

import (
	"encoding/json"
	"net/http"
	"sort"
	"sync"
)

// Health collects readiness checks from components.
type Health struct {
	mu     sync.Mutex
	checks map[string]func() error
	roles  map[string]func() string
}

// NewHealth returns an empty Health: ready until a check says otherwise.
func NewHealth() *Health {
	return &Health{checks: make(map[string]func() error), roles: make(map[string]func() string)}
}

// Role adds a named role to /readyz's answer ("cdc": "leader" or
// "standby"), so that a probe tells the leader from a standby; a role is
// never a failure.
func (h *Health) Role(name string, role func() string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.roles[name] = role
}

// Roles returns every role by name.
func (h *Health) Roles() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]string, len(h.roles))
	for name, role := range h.roles {
		out[name] = role()
	}
	return out
}

// Register adds a named check; nil from the check means ready.
func (h *Health) Register(name string, check func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = check
}

// Ready runs every check and returns the failures by name.
func (h *Health) Ready() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	failed := map[string]string{}
	for name, check := range h.checks {
		if err := check(); err != nil {
			failed[name] = err.Error()
		}
	}
	return failed
}

func (h *Health) serveReady(w http.ResponseWriter, _ *http.Request) {
	failed := h.Ready()
	w.Header().Set("Content-Type", "application/json")
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	names := make([]string, 0, len(failed))
	for n := range failed {
		names = append(names, n)
	}
	sort.Strings(names)
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": len(failed) == 0, "failing": failed, "roles": h.Roles()})
}
