package seckill_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// The spec's server URLs (api/openapi.json), replaced by a test daemon's.
const (
	specPublic = "http://localhost:9090"
	specAdmin  = "http://127.0.0.1:9091"
)

// reqWant says whether a request is meant to conform to the spec: the
// validator must accept a valid one and refuse an invalid one; some
// requests the spec cannot judge (a body over 4 KiB of spaces).
type reqWant int

const (
	reqValid reqWant = iota
	reqInvalid
	reqAny
)

// conformance sends requests to a daemon and validates each request and
// answer against the spec, recording which documented statuses were seen.
type conformance struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	seen   map[string]bool // "operationId status"
}

// loadSpec parses and validates the embedded spec with its servers
// pointed at d's listeners.
func loadSpec(t *testing.T, d *node) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("spec invalid: %v", err)
	}
	repoint := func(ss openapi3.Servers) {
		for _, s := range ss {
			switch s.URL {
			case specPublic:
				s.URL = d.base
			case specAdmin:
				s.URL = d.admin
			default:
				t.Fatalf("unknown server %q in the spec", s.URL)
			}
		}
	}
	repoint(doc.Servers)
	for _, p := range doc.Paths.Map() {
		repoint(p.Servers)
	}
	return doc
}

func newConformance(t *testing.T, d *node) *conformance {
	doc := loadSpec(t, d)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &conformance{t: t, doc: doc, router: router, seen: map[string]bool{}}
}

// authenticate checks only that the credentials a scheme names are
// present: the daemon itself verifies them (and a bad token must still
// get a documented 401).
func authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header
	switch s := in.SecurityScheme; s.Type {
	case "http":
		if !strings.HasPrefix(h.Get("Authorization"), "Bearer ") {
			return errors.New("no bearer token")
		}
	case "apiKey":
		if h.Get(s.Name) == "" {
			return fmt.Errorf("no %s header", s.Name)
		}
	default:
		return fmt.Errorf("scheme type %q", s.Type)
	}
	return nil
}

// do sends method url with body (as application/json unless hdr sets a
// Content-Type), validates the request as rw says and the answer always,
// and fails the test unless the status is want (0: any).
func (c *conformance) do(rw reqWant, want int, method, url, body string, hdr ...string) reply {
	c.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Fatalf("%s %s: not in the spec: %v", method, url, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: authenticate, MultiError: true}}
	verr := openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case rw == reqValid && verr != nil:
		c.t.Errorf("%s %s: request refused by the spec: %v", method, url, verr)
	case rw == reqInvalid && verr == nil:
		c.t.Errorf("%s %s %q: the spec accepts a request the daemon refuses", method, url, body)
	}
	// The validator read the body; send it again.
	req.Body = io.NopCloser(strings.NewReader(body))
	resp, err := client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(raw)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
	if err != nil {
		c.t.Errorf("%s %s → %d %s: answer does not match the spec: %v", method, url, resp.StatusCode, trim(raw), err)
	}
	if want != 0 && resp.StatusCode != want {
		c.t.Errorf("%s %s → %d %s, want %d", method, url, resp.StatusCode, trim(raw), want)
	}
	c.seen[fmt.Sprintf("%s %d", route.Operation.OperationID, resp.StatusCode)] = true
	r := reply{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	_ = json.Unmarshal(raw, &r.Body)
	return r
}

func trim(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// until repeats a call until it answers want (each answer validated and
// counted), for states the daemon reaches asynchronously.
func (c *conformance) until(want int, what string, f func() reply) reply {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := f()
		if r.Status == want {
			return r
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s: last %d %s", what, r.Status, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWithGoods is start with GET /goods/{id} served from shop.goods; it
// returns the server too, whose muxes the route check asks.
func (s *stack) startWithGoods(seckillExtra string) (*node, *api.Server) {
	s.t.Helper()
	s.exec("CREATE TABLE IF NOT EXISTS goods (id BIGINT PRIMARY KEY, name VARCHAR(64), price DECIMAL(10,2), note TEXT)")
	yaml := s.configYAML(0, 0, seckillExtra) + "goods:\n  table: shop.goods\n"
	cfg, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	var srv *api.Server
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }), daemon.Options(cfg), fx.Populate(&srv))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		s.t.Fatalf("daemon start: %v", err)
	}
	d := &node{app: app, base: "http://" + srv.PublicAddr().String(), admin: "http://" + srv.AdminAddr().String(), cfg: cfg}
	s.t.Cleanup(d.stop)
	return d, srv
}

// TestOpenAPIConformance drives every endpoint of api/openapi.json on a
// real daemon through each status a test can reach, validating every
// request and answer against the spec (kin-openapi), and checks that each
// documented route is the route the daemon's muxes serve.
func TestOpenAPIConformance(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	s := newStack(t)
	d, srv := s.startWithGoods("admin_token: " + adminToken + "\nlimits: {per_ip: 0, per_user: 0.01, user_burst: 2}")
	c := newConformance(t, d)

	t.Run("routes", func(t *testing.T) {
		// Every documented operation is served by its listener's mux under
		// exactly the documented pattern.
		for path, item := range c.doc.Paths.Map() {
			mux, base := srv.Public, d.base
			if item.Servers[0].URL == d.admin {
				mux, base = srv.Admin, d.admin
			}
			for method := range item.Operations() {
				r, _ := http.NewRequest(method, base+strings.NewReplacer("{id}", "1").Replace(path), nil)
				if _, pattern := mux.Handler(r); pattern != method+" "+path {
					t.Errorf("%s %s: the %s mux serves it as %q", method, path, item.Servers[0].Description, pattern)
				}
			}
		}
	})

	// Admin: health, metrics, the spec itself.
	c.do(reqValid, 200, "GET", d.admin+"/livez", "")
	c.do(reqValid, 200, "GET", d.admin+"/healthz", "")
	c.do(reqValid, 200, "GET", d.admin+"/metrics", "")
	if r := c.do(reqValid, 200, "GET", d.admin+"/openapi.json", ""); r.Raw != string(api.OpenAPI) {
		t.Error("/openapi.json is not the embedded spec")
	}
	c.until(200, "ready", func() reply { return c.do(reqAny, 0, "GET", d.admin+"/readyz", "") })

	// Goods.
	s.exec("INSERT INTO goods VALUES (1, 'pen', 1.50, NULL)")
	if r := c.do(reqValid, 200, "GET", d.base+"/goods/1", ""); r.Header.Get("X-Cache") != "DB" || r.Body["name"] != "pen" {
		t.Errorf("goods 1: %s %v", r.Header.Get("X-Cache"), r.Body)
	}
	c.do(reqValid, 200, "GET", d.base+"/goods/1", "")
	c.do(reqValid, 404, "GET", d.base+"/goods/999", "")
	c.do(reqInvalid, 400, "GET", d.base+"/goods/abc", "")
	c.do(reqInvalid, 400, "GET", d.base+"/goods/-1", "")

	// Items and reservations.
	s.addItem(1, 1)
	s.addItem(2, 100)
	item := func(id string) string { return d.base + "/seckill/items/" + id }
	resv := func(id string) string { return item(id) + "/reservations" }
	c.do(reqValid, 200, "GET", item("1"), "")
	c.do(reqInvalid, 400, "GET", item("0"), "")
	c.do(reqValid, 404, "GET", item("777"), "") // no such item
	// Not ready: item 3's marker gone, as after a Redis loss (the jobs
	// role rebuilds it, which takes produce_timeout at least).
	s.addItem(3, 5)
	if err := s.rdb.Del(context.Background(), "sk:{3}:ready").Err(); err != nil {
		t.Fatal(err)
	}
	c.do(reqValid, 503, "GET", item("3"), "")
	c.do(reqValid, 503, "POST", resv("3"), "", asUser(12)...)
	r := c.do(reqValid, 202, "POST", resv("1"), "", asUser(10)...)
	order, _ := r.Body["order_id"].(string)
	if r := c.do(reqValid, 409, "POST", resv("1"), "", asUser(10)...); r.Body["order_id"] != order {
		t.Errorf("409 names order %v, want %s", r.Body["order_id"], order)
	}
	c.do(reqValid, 429, "POST", resv("1"), "", asUser(10)...) // user_burst 2
	c.do(reqValid, 410, "POST", resv("1"), "", asUser(11)...)
	c.do(reqValid, 404, "POST", resv("777"), "", asUser(12)...)
	c.do(reqInvalid, 401, "POST", resv("2"), "")
	c.do(reqValid, 401, "POST", resv("2"), "", "Authorization", "Bearer not-a-token")
	c.do(reqInvalid, 400, "POST", resv("0"), "", asUser(13)...)
	c.do(reqInvalid, 400, "POST", resv("2"), `{"user_id": 5}`, asUser(14)...)
	c.do(reqInvalid, 415, "POST", resv("2"), `{}`, append(asUser(15), "Content-Type", "text/plain")...)
	c.do(reqAny, 413, "POST", resv("2"), "{}"+strings.Repeat(" ", 5000), asUser(16)...)
	r = c.do(reqValid, 202, "POST", resv("2"), `{}`, asUser(17)...)
	other, _ := r.Body["order_id"].(string)

	// Orders and payment.
	ord := func(id string) string { return d.base + "/orders/" + id }
	pay := func(id string) string { return ord(id) + "/pay" }
	ownOrder(c, ord(order), asUser(10))
	c.do(reqValid, 404, "GET", ord(order), "", asUser(99)...)
	c.do(reqInvalid, 400, "GET", ord("1-nope"), "", asUser(10)...)
	c.do(reqInvalid, 401, "GET", ord(order), "")
	c.until(200, "order paid", func() reply { return c.do(reqValid, 0, "POST", pay(order), "", asUser(10)...) })
	c.do(reqValid, 200, "POST", pay(order), `{}`, asUser(10)...) // paid again: the same answer
	c.do(reqValid, 404, "POST", pay(order), "", asUser(99)...)
	c.do(reqInvalid, 400, "POST", pay("1-nope"), "", asUser(10)...)
	c.do(reqInvalid, 400, "POST", pay(order), `{"x": 1}`, asUser(10)...)
	c.do(reqInvalid, 415, "POST", pay(order), `{}`, append(asUser(10), "Content-Type", "text/plain")...)
	c.do(reqAny, 413, "POST", pay(order), "{}"+strings.Repeat(" ", 5000), asUser(10)...)
	c.do(reqInvalid, 401, "POST", pay(order), "")
	s.eventually(30*time.Second, "order "+other+" stored", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE order_id = ?", other) == 1
	})
	s.exec("UPDATE sk_orders SET status = 'canceled' WHERE order_id = ?", other)
	c.do(reqValid, 409, "POST", pay(other), "", asUser(17)...)

	// Restock (admin).
	admin := []string{"Authorization", "Bearer " + adminToken}
	restock := func(id string) string { return d.admin + "/admin/items/" + id + "/restock" }
	c.do(reqValid, 200, "POST", restock("2"), `{"add": 5}`, admin...)
	c.do(reqInvalid, 400, "POST", restock("2"), `{"add": 0}`, admin...)
	c.do(reqInvalid, 400, "POST", restock("2"), "", admin...)
	c.do(reqInvalid, 400, "POST", restock("0"), `{"add": 1}`, admin...)
	c.do(reqValid, 404, "POST", restock("888"), `{"add": 1}`, admin...)
	c.do(reqValid, 409, "POST", restock("2"), `{"add": -1000000}`, admin...)
	c.do(reqInvalid, 415, "POST", restock("2"), `{"add": 1}`, append(slices.Clone(admin), "Content-Type", "text/plain")...)
	c.do(reqAny, 413, "POST", restock("2"), `{"add": 1}`+strings.Repeat(" ", 5000), admin...)
	c.do(reqInvalid, 401, "POST", restock("2"), `{"add": 1}`)
	c.do(reqValid, 401, "POST", restock("2"), `{"add": 1}`, "Authorization", "Bearer wrong")

	// Backends down: Redis first (readiness, the pending set an unknown
	// order is looked up in, the goods' L2), then MySQL (restock).
	s.stopRedis()
	unknown := "1-01a22a86-76b1-7df6-99e0-0c6fb35f7a2b"
	c.until(503, "not ready", func() reply { return c.do(reqValid, 0, "GET", d.admin+"/readyz", "") })
	c.do(reqValid, 503, "GET", ord(unknown), "", asUser(10)...)
	c.do(reqValid, 503, "POST", pay(unknown), "", asUser(10)...)
	c.do(reqValid, 503, "GET", d.base+"/goods/2", "")
	if err := s.my.Stop(); err != nil {
		t.Fatal(err)
	}
	c.do(reqValid, 503, "POST", restock("2"), `{"add": 1}`, admin...)

	// Failed authentications, past their burst, lock the address out
	// (last: every later buyer or admin request from here gets 429).
	c.until(429, "buyer lock-out", func() reply { return c.do(reqValid, 0, "GET", ord(order), "", "Authorization", "Bearer bad") })
	c.do(reqValid, 429, "GET", ord(order), "", asUser(10)...)
	c.do(reqValid, 429, "POST", pay(order), "", asUser(10)...)
	c.until(429, "admin lock-out", func() reply {
		return c.do(reqValid, 0, "POST", restock("2"), `{"add": 1}`, "Authorization", "Bearer wrong")
	})
	c.do(reqValid, 429, "POST", restock("2"), `{"add": 1}`, admin...)

	c.checkCoverage()
}

// checkCoverage fails for a documented status never seen, and for a
// status seen but not documented (ValidateResponse has already failed for
// it).
func (c *conformance) checkCoverage() {
	c.t.Helper()
	documented := map[string]bool{}
	for _, item := range c.doc.Paths.Map() {
		for _, op := range item.Operations() {
			for status := range op.Responses.Map() {
				documented[op.OperationID+" "+status] = true
			}
		}
	}
	for k := range documented {
		if !c.seen[k] {
			c.t.Errorf("%s: documented, never seen in the test", k)
		}
	}
	for k := range c.seen {
		if !documented[k] {
			c.t.Errorf("%s: seen, not documented", k)
		}
	}
}

// TestOpenAPIGatewayHeader: the spec's second buyer scheme, the gateway's
// user and secret headers, validated like the bearer token.
func TestOpenAPIGatewayHeader(t *testing.T) {
	standaloneOnly(t, whyHTTP)
	const gw = "gateway-secret-0123456789abcdef-xyz"
	s := newStack(t)
	d := s.start("auth: {mode: header, header: {secret: " + gw + "}}")
	c := newConformance(t, d)
	s.addItem(3, 10)
	hdr := []string{"X-User-Id", "3", "X-Gateway-Secret", gw}
	r := c.do(reqValid, 202, "POST", d.base+"/seckill/items/3/reservations", "", hdr...)
	order, _ := r.Body["order_id"].(string)
	ownOrder(c, d.base+"/orders/"+order, hdr)
	c.do(reqInvalid, 401, "GET", d.base+"/orders/"+order, "", "X-User-Id", "3")
	c.do(reqValid, 401, "GET", d.base+"/orders/"+order, "", "X-User-Id", "3", "X-Gateway-Secret", strings.Repeat("w", len(gw)))
}

// ownOrder reads the buyer's own order until it answers 200. Right after
// the reservation it can answer 404 for a moment: GET /orders/{id} reads
// MySQL, then the pending set in Redis; an order stored by the consumer
// between the two reads, and its pending entry removed by CDC, is in
// neither (seen once in about ten runs).
func ownOrder(c *conformance, url string, auth []string) {
	c.t.Helper()
	c.until(200, "own order", func() reply { return c.do(reqValid, 0, "GET", url, "", auth...) })
}
