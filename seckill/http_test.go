package seckill

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// testAuth is a valid seckill.auth for tests that build a Config by hand
// (the api role needs one).
var testAuth = auth.Config{Mode: auth.ModeJWT, JWT: auth.JWT{HS256Secret: "unit-test-jwt-secret-0123456789abcdef"}}

// TestAdminAuthRateLimited: failed admin authentications from one address
// get 401 up to the burst, then 429 (with Retry-After) without the token
// being compared, even a right one; another address is not affected.
func TestAdminAuthRateLimited(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef"
	h := &Handler{cfg: Config{AdminToken: token}, m: newMetrics(prometheus.NewRegistry()), log: zerolog.Nop(),
		authFails: newLimiter(1/adminFailEvery.Seconds(), adminFailBurst)}
	mux := http.NewServeMux()
	h.Routes(http.NewServeMux(), mux)
	restock := func(ip, auth string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/admin/items/7/restock", strings.NewReader(`{"add":0}`))
		r.RemoteAddr = ip + ":40000"
		r.Header.Set("Content-Type", "application/json")
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		return w
	}
	for i := range adminFailBurst {
		auth := "Bearer wrong"
		if i%2 == 0 {
			auth = "" // no token fails the same way
		}
		if w := restock("10.0.0.1", auth); w.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d %s, want 401", i+1, w.Code, w.Body)
		}
	}
	for _, auth := range []string{"Bearer wrong", "Bearer " + token} {
		w := restock("10.0.0.1", auth)
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
			t.Errorf("after %d failures, %q: %d (Retry-After %q), want 429", adminFailBurst, auth, w.Code, w.Header().Get("Retry-After"))
		}
	}
	// Another address: its token is checked (then the body: add 0 is refused).
	if w := restock("10.0.0.2", "Bearer "+token); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "add") {
		t.Errorf("right token from another address: %d %s, want 400 about add", w.Code, w.Body)
	}
	if n := testutil.ToFloat64(h.m.limited.WithLabelValues("admin_auth")); n != 2 {
		t.Errorf("rate_limited_total{limit=admin_auth} = %v, want 2", n)
	}
}

// TestAdminRoutesNeedToken: without a token the admin endpoints are not
// served at all, and never on the public mux.
func TestAdminRoutesNeedToken(t *testing.T) {
	for _, token := range []string{"", "0123456789abcdef0123456789abcdef"} {
		h := &Handler{cfg: Config{AdminToken: token}, m: newMetrics(prometheus.NewRegistry()), log: zerolog.Nop()}
		public, admin := http.NewServeMux(), http.NewServeMux()
		h.Routes(public, admin)
		r := httptest.NewRequest("POST", "/admin/items/7/restock", strings.NewReader(`{"add":1}`))
		if _, pattern := public.Handler(r); pattern != "" {
			t.Errorf("token %q: the public mux serves %s", token, pattern)
		}
		_, pattern := admin.Handler(r)
		if (pattern != "") != (token != "") {
			t.Errorf("token %q: admin mux pattern %q", token, pattern)
		}
	}
}
