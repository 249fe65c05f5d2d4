package seckill_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"
)

// TestOrdersOwnerOnly: an order is shown and paid only for the user who
// reserved it; for anyone else it does not exist (404, the same answer as
// an unknown order), queued or stored, and their payment changes nothing.
func TestOrdersOwnerOnly(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	d := s.start("")
	s.addItem(7, 10)
	const a, b = 1, 2
	r, err := d.reserve(7, a)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve as %d: %v %+v", a, err, r)
	}
	order := r.Body["order_id"].(string)
	// Right away (queued, or already stored): B gets what an unknown
	// order gets.
	for _, rr := range []func() (reply, error){
		func() (reply, error) { return d.getOrder(b, order) },
		func() (reply, error) { return d.pay(b, order) },
	} {
		if r, err := rr(); err != nil || r.Status != 404 {
			t.Errorf("user %d on user %d's fresh order: %v %d %s, want 404", b, a, err, r.Status, r.Raw)
		} else {
			wantErrorBody(t, r)
		}
	}
	if r, err := d.getOrder(a, order); err != nil || r.Status != 200 || r.Body["order_id"] != order {
		t.Errorf("owner reads the order: %v %+v", err, r)
	}
	s.eventually(30*time.Second, "the order stored", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ? AND status = 'created'", order) == 1
	})
	for _, rr := range []func() (reply, error){
		func() (reply, error) { return d.getOrder(b, order) },
		func() (reply, error) { return d.pay(b, order) },
	} {
		if r, err := rr(); err != nil || r.Status != 404 {
			t.Errorf("user %d on user %d's stored order: %v %d %s, want 404", b, a, err, r.Status, r.Raw)
		}
	}
	if st := s.int("SELECT status = 'created' FROM sk_orders WHERE order_id = ?", order); st != 1 {
		t.Fatalf("another user's payment changed the order")
	}
	// Without a token: 401 on every buyer endpoint, with a challenge.
	for _, c := range [][2]string{{"GET", "/orders/" + order}, {"POST", "/orders/" + order + "/pay"}, {"POST", "/seckill/items/7/reservations"}} {
		r, err := call(c[0], d.base+c[1], "")
		if err != nil || r.Status != 401 || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s without a token: %v %d %s (WWW-Authenticate %q), want 401", c[0], c[1], err, r.Status, r.Raw, r.Header.Get("WWW-Authenticate"))
		} else {
			wantErrorBody(t, r)
		}
	}
	if r, err := d.pay(a, order); err != nil || r.Status != 200 || r.Body["status"] != "paid" {
		t.Fatalf("owner pays: %v %+v", err, r)
	}
	if r, _ := d.getOrder(a, order); r.Body["status"] != "paid" || r.Body["user_id"] != float64(a) {
		t.Errorf("owner reads the paid order: %+v", r)
	}
}

// TestTokensRefused: only a valid token of the configured secret and
// algorithm, unexpired, with a user id, reserves; forged, expired,
// unsigned, other-algorithm tokens and a user_id in the body are refused
// and reserve nothing. Past 20 failures from one address, that address
// gets 429 even with a good token.
func TestTokensRefused(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	d := s.start("")
	s.addItem(8, 10)
	now := time.Now()
	forged, _ := auth.Mint(auth.JWT{HS256Secret: strings.Repeat("f", 32)}, 5, time.Hour, now)
	expired, _ := auth.Mint(auth.JWT{HS256Secret: testJWTSecret}, 5, time.Hour, now.Add(-2*time.Hour))
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "5"}).SignedString([]byte(testJWTSecret))
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"sub": "5", "exp": now.Add(time.Hour).Unix()}).SignedString([]byte(testJWTSecret))
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rs256, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"sub": "5", "exp": now.Add(time.Hour).Unix()}).SignedString(rsaKey)
	noUser, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "bob", "exp": now.Add(time.Hour).Unix()}).SignedString([]byte(testJWTSecret))
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	none := enc(map[string]string{"alg": "none", "typ": "JWT"}) + "." + enc(map[string]any{"sub": "5", "exp": now.Add(time.Hour).Unix()}) + "."
	url := d.base + "/seckill/items/8/reservations"
	for _, tc := range []struct{ name, authz, reason string }{
		{"no token", "", "missing"},
		{"not bearer", "Basic dXNlcjpwdw==", "malformed"},
		{"forged", "Bearer " + forged, "signature"},
		{"expired", "Bearer " + expired, "expired"},
		{"no exp", "Bearer " + noExp, "claims"},
		{"alg none", "Bearer " + none, "signature"},
		{"HS512", "Bearer " + hs512, "signature"},
		{"RS256", "Bearer " + rs256, "signature"},
		{"no user id", "Bearer " + noUser, "user"},
	} {
		var hdr []string
		if tc.authz != "" {
			hdr = []string{"Authorization", tc.authz}
		}
		r, err := call("POST", url, "", hdr...)
		if err != nil || r.Status != 401 || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), `Bearer realm="cachesync"`) {
			t.Errorf("%s: %v %d %s (WWW-Authenticate %q), want 401", tc.name, err, r.Status, r.Raw, r.Header.Get("WWW-Authenticate"))
			continue
		}
		wantErrorBody(t, r)
		if n := metric(t, d, fmt.Sprintf(`cachesync_seckill_auth_failures_total{reason=%q}`, tc.reason)); n < 1 {
			t.Errorf("%s: auth_failures_total{reason=%q} = %v", tc.name, tc.reason, n)
		}
	}
	// A valid token with a user_id in the body, even its own: refused.
	for _, body := range []string{`{"user_id":6}`, `{"user_id":5}`} {
		if r, _ := call("POST", url, body, asUser(5)...); r.Status != 400 || !strings.Contains(r.Raw, "user_id") {
			t.Errorf("token of 5, body %s: %d %s, want 400", body, r.Status, r.Raw)
		}
	}
	ctx := context.Background()
	if n := s.rdb.ZCard(ctx, "sk:{8}:pending").Val() + s.rdb.HLen(ctx, "sk:{8}:buyers").Val(); n != 0 {
		t.Fatalf("refused requests reserved: %d pending/buyers entries", n)
	}
	// 9 failures so far; the burst is 20 (one more every 3 s), then 429
	// for this address, a good token included.
	failures := 9
	for {
		r, _ := call("POST", url, "", "Authorization", "Bearer "+forged)
		if r.Status == 429 {
			break
		}
		if r.Status != 401 || failures > 30 {
			t.Fatalf("failure %d: %d, want 401 and 429 after 20", failures+1, r.Status)
		}
		failures++
	}
	if failures < 20 {
		t.Errorf("429 after %d failures, want 20", failures)
	}
	r, _ := call("POST", url, "", asUser(5)...)
	if r.Status != 429 || r.Header.Get("Retry-After") == "" {
		t.Errorf("after %d failures, a good token: %d %s (Retry-After %q), want 429", failures, r.Status, r.Raw, r.Header.Get("Retry-After"))
	}
	if n := metric(t, d, `cachesync_seckill_rate_limited_total{limit="auth"}`); n < 2 {
		t.Errorf(`rate_limited_total{limit="auth"} = %v, want 2`, n)
	}
}

// TestGatewayHeaderMode: behind a gateway the user header counts only
// with the gateway's secret; a bearer token means nothing there.
func TestGatewayHeaderMode(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	const gw = "gateway-secret-0123456789abcdef-xyz"
	s := newStack(t)
	d := s.start("auth: {mode: header, header: {secret: " + gw + "}}")
	s.addItem(9, 10)
	url := d.base + "/seckill/items/9/reservations"
	for _, tc := range []struct {
		name string
		hdr  []string
	}{
		{"user header alone", []string{"X-User-Id", "3"}},
		{"wrong secret", []string{"X-User-Id", "3", "X-Gateway-Secret", strings.Repeat("w", len(gw))}},
		{"secret prefix", []string{"X-User-Id", "3", "X-Gateway-Secret", gw[:32]}},
		{"bearer token", asUser(3)},
	} {
		r, err := call("POST", url, "", tc.hdr...)
		if err != nil || r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %v %d %s, want 401 with a challenge", tc.name, err, r.Status, r.Raw)
		}
	}
	r, err := call("POST", url, "", "X-User-Id", "3", "X-Gateway-Secret", gw)
	if err != nil || r.Status != 202 || r.Body["user_id"] != float64(3) {
		t.Fatalf("through the gateway: %v %+v", err, r)
	}
	order := r.Body["order_id"].(string)
	if r, _ := call("GET", d.base+"/orders/"+order, "", "X-User-Id", "4", "X-Gateway-Secret", gw); r.Status != 404 {
		t.Errorf("user 4 through the gateway reads user 3's order: %d %s", r.Status, r.Raw)
	}
	if r, _ := call("GET", d.base+"/orders/"+order, "", "X-User-Id", "3", "X-Gateway-Secret", gw); r.Status != 200 {
		t.Errorf("user 3 reads their order: %d %s", r.Status, r.Raw)
	}
}

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (Linux routes all of 127/8 to lo).
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// reserveVia reserves item as user through c with an X-Forwarded-For.
func reserveVia(t *testing.T, c *http.Client, base string, item, user int64, xff string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/seckill/items/%d/reservations", base, item), nil)
	req.Header.Set("Authorization", "Bearer "+token(user))
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestClientIPTrustedProxies: with a per-IP limit of one reservation,
// X-Forwarded-For is ignored from a peer that is not a trusted proxy (all
// its requests share its address) and read from the right, past trusted
// hops, from one that is (entries the client wrote on the left change
// nothing). The per-user limit keys on the token's user, whatever the
// address.
func TestClientIPTrustedProxies(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	d := s.start("limits: {per_ip: 0.001, ip_burst: 1, per_user: 0.001, user_burst: 1}\ntrusted_proxies: [127.0.0.2]")
	s.addItem(10, 100)
	direct, proxy := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	for i, tc := range []struct {
		name string
		c    *http.Client
		xff  string
		want int
	}{
		{"untrusted peer, first", direct, "10.0.0.1", 202},
		{"untrusted peer, another XFF", direct, "10.0.0.2", 429},
		{"untrusted peer, no XFF", direct, "", 429},
		{"proxy, client A", proxy, "10.0.0.3", 202},
		{"proxy, client B", proxy, "10.0.0.4", 202},
		{"proxy, client A again", proxy, "10.0.0.3", 429},
		{"proxy, A with a forged left entry", proxy, "6.6.6.6, 10.0.0.3", 429},
		{"proxy, C behind a second trusted hop", proxy, "10.0.0.5, 127.0.0.2", 202},
		{"proxy, its own address (no XFF)", proxy, "", 202},
	} {
		if got := reserveVia(t, tc.c, d.base, 10, int64(100+i), tc.xff); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	// One user from two addresses: the second is over the user's limit
	// (not 409: the limit comes first).
	if got := reserveVia(t, proxy, d.base, 10, 500, "10.0.1.1"); got != 202 {
		t.Fatalf("user 500 first: %d", got)
	}
	if got := reserveVia(t, proxy, d.base, 10, 500, "10.0.1.2"); got != 429 {
		t.Errorf("user 500 from another address: %d, want 429", got)
	}
	if ip, user := metric(t, d, `cachesync_seckill_rate_limited_total{limit="ip"}`), metric(t, d, `cachesync_seckill_rate_limited_total{limit="user"}`); ip != 4 || user != 1 {
		t.Errorf("rate_limited_total ip %v, user %v; want 4 and 1", ip, user)
	}
}

// TestStrictInput: duplicate keys, non-JSON content types, any
// Content-Encoding and order ids not in the exact generated form are
// refused with 4xx before anything reaches Redis or MySQL: Redis's
// MONITOR sees none of them, the stock and the reservations do not move.
func TestStrictInput(t *testing.T) {
	s := newStack(t)
	d := s.start("admin_token: " + adminToken)
	s.addItem(11, 10)
	stopMonitor := s.monitor(t)
	admin := []string{"Authorization", "Bearer " + adminToken}
	res := d.base + "/seckill/items/11/reservations"
	restock := d.admin + "/admin/items/11/restock"
	const glob = "11-0190f0e0-0000-7000-8000-00000000000*"
	for _, tc := range []struct {
		name, method, url, body string
		hdr                     []string
		want                    int
	}{
		{"reserve, duplicate keys", "POST", res, `{"user_id":1,"user_id":2}`, asUser(1), 400},
		{"reserve, text/plain", "POST", res, `{}`, append(asUser(2), "Content-Type", "text/plain"), 415},
		{"reserve, form", "POST", res, `{}`, append(asUser(3), "Content-Type", "application/x-www-form-urlencoded"), 415},
		{"reserve, gzip", "POST", res, `{}`, append(asUser(4), "Content-Encoding", "gzip"), 415},
		{"reserve, trailing data", "POST", res, `{} x`, asUser(5), 400},
		{"restock, duplicate keys", "POST", restock, `{"add":5,"add":-5}`, admin, 400},
		{"restock, nested duplicate", "POST", restock, `{"add":5,"x":{"a":1,"a":2}}`, admin, 400},
		{"restock, case-folded key", "POST", restock, `{"ADD":5}`, admin, 400},
		{"restock, text/plain", "POST", restock, `{"add":5}`, append(admin[:2:2], "Content-Type", "text/plain"), 415},
		{"restock, no Content-Type", "POST", restock, `{"add":5}`, append(admin[:2:2], "Content-Type", ""), 415},
		{"restock, deflate", "POST", restock, `{"add":5}`, append(admin[:2:2], "Content-Encoding", "deflate"), 415},
		{"restock, two objects", "POST", restock, `{"add":5}{"add":5}`, admin, 400},
		{"order, glob", "GET", d.base + "/orders/" + glob, "", asUser(1), 400},
		{"order, glob ?", "GET", d.base + "/orders/11-0190f0e0-0000-7000-8000-00000000000%3F", "", asUser(1), 400},
		{"order, character class", "GET", d.base + "/orders/11-0190f0e0-0000-7000-8000-0000000000[0]", "", asUser(1), 400},
		{"order, uppercase", "GET", d.base + "/orders/11-0190F0E0-0000-7000-8000-000000000001", "", asUser(1), 400},
		{"order, UUIDv4", "GET", d.base + "/orders/11-0190f0e0-0000-4000-8000-000000000001", "", asUser(1), 400},
		{"order, leading zero", "GET", d.base + "/orders/011-0190f0e0-0000-7000-8000-000000000001", "", asUser(1), 400},
		{"order, sign", "GET", d.base + "/orders/+11-0190f0e0-0000-7000-8000-000000000001", "", asUser(1), 400},
		{"pay, glob", "POST", d.base + "/orders/" + glob + "/pay", "", asUser(1), 400},
		{"pay, a body", "POST", d.base + "/orders/11-0190f0e0-0000-7000-8000-000000000001/pay", `{"amount":1}`, asUser(1), 400},
	} {
		hdr := tc.hdr
		r, err := call(tc.method, tc.url, tc.body, hdr...)
		if err != nil || r.Status != tc.want {
			t.Errorf("%s: %v %d %s, want %d", tc.name, err, r.Status, r.Raw, tc.want)
			continue
		}
		wantErrorBody(t, r)
	}
	seen := stopMonitor()
	// An order id (ours, or one Reserve made: its script gets "11-<uuid>")
	// or a lookup of one: the jobs' own scans of pending are no hit.
	for _, l := range seen {
		low := strings.ToLower(l)
		if strings.Contains(low, `"11-`) || strings.Contains(low, "0190f0e0") || strings.Contains(low, `"zscan"`) || strings.Contains(low, `"zscore"`) {
			t.Errorf("a refused request reached Redis: %s", l)
		}
	}
	if len(seen) == 0 {
		t.Errorf("MONITOR saw nothing at all: is it working?")
	}
	if n := s.int("SELECT stock FROM sk_items WHERE id = 11"); n != 10 {
		t.Errorf("stock %d after refused restocks, want 10", n)
	}
}

// monitor runs MONITOR on the stack's Redis, on every node of a cluster
// (see monitorAddr), until the returned function, which returns every
// command seen, is called.
func (s *stack) monitor(t *testing.T) func() []string {
	t.Helper()
	if redisCluster == nil {
		return monitorAddr(t, s.rs.Addr())
	}
	var stops []func() []string
	for _, a := range redisCluster.Addrs() {
		stops = append(stops, monitorAddr(t, a))
	}
	return func() []string {
		var seen []string
		for _, stop := range stops {
			seen = append(seen, stop()...)
		}
		return seen
	}
}

// monitorAddr runs Redis's MONITOR on its own connection (go-redis's
// Monitor races with its pool) until the returned function, which returns
// every command seen, is called.
func monitorAddr(t *testing.T, addr string) func() []string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	if l, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("MONITOR: %q %v", l, err)
	}
	var seen []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			l, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			seen = append(seen, strings.TrimSpace(l))
		}
	}()
	return func() []string {
		time.Sleep(200 * time.Millisecond) // the last commands' lines
		conn.Close()
		<-done
		return seen
	}
}

// TestErrorBodiesGeneric: an internal error (MySQL's "table doesn't
// exist") answers 503 with a generic message and the request id; the
// error text is only in the log, on a line with the same request id. A
// client's safe X-Request-Id is kept, an unsafe one replaced.
func TestErrorBodiesGeneric(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	var logs testenv.LogBuffer
	d := s.startWith("", logTo(&logs, zerolog.WarnLevel))
	s.addItem(12, 10)
	r, err := d.reserve(12, 1)
	if err != nil || r.Status != 202 {
		t.Fatalf("reserve: %v %+v", err, r)
	}
	order := r.Body["order_id"].(string)
	s.exec("RENAME TABLE sk_orders TO sk_orders_moved")
	for _, tc := range []struct{ sent, want string }{
		{"", ""}, // generated
		{"trace-42.abc_DEF:1", "trace-42.abc_DEF:1"}, // kept
		{"bad id with spaces", ""},                   // replaced
	} {
		hdr := asUser(1)
		if tc.sent != "" {
			hdr = append(hdr, "X-Request-Id", tc.sent)
		}
		r, err := call("GET", d.base+"/orders/"+order, "", hdr...)
		if err != nil || r.Status != 503 {
			t.Fatalf("GET order with sk_orders gone: %v %d %s, want 503", err, r.Status, r.Raw)
		}
		wantErrorBody(t, r)
		id := r.Header.Get("X-Request-Id")
		if tc.want != "" && id != tc.want || tc.want == "" && (id == tc.sent || len(id) != 32) {
			t.Errorf("X-Request-Id sent %q, answered %q", tc.sent, id)
		}
		for _, leak := range []string{"sk_orders", "1146", "Error", "mysql", "doesn't exist"} {
			if strings.Contains(r.Raw, leak) {
				t.Errorf("the body shows %q: %s", leak, r.Raw)
			}
		}
		var line string
		s.eventually(5*time.Second, "the log line of request "+id, func() bool {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `"request_id":"`+id+`"`) {
					line = l
					return true
				}
			}
			return false
		})
		if !strings.Contains(line, "sk_orders") {
			t.Errorf("the log line of request %s lacks the detail: %s", id, line)
		}
	}
}
