package seckill

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/seckill/auth"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Handler serves the sale's HTTP endpoints.
type Handler struct {
	cfg     Config
	res     *Reserver
	store   *Store
	rdb     redis.UniversalClient
	auth    *auth.Authenticator // nil: every buyer request is refused (401)
	proxies proxies             // whose X-Forwarded-For is believed
	perUser *limiter
	perIP   *limiter
	// authFails counts failed admin authentications per client IP: past
	// its burst, admin requests from that IP get 429 without a token check.
	authFails *limiter
	// buyerFails does the same for the buyers' endpoints.
	buyerFails *limiter
	m          *metrics
	log        zerolog.Logger
}

// Routes adds the clients' endpoints to public and the admin endpoints to
// admin. Without an admin token the admin endpoints are not served at all
// (404).
func (h *Handler) Routes(public, admin *http.ServeMux) {
	public.HandleFunc("POST /seckill/items/{id}/reservations", h.reserve)
	public.HandleFunc("GET /seckill/items/{id}", h.item)
	public.HandleFunc("GET /orders/{id}", h.order)
	public.HandleFunc("POST /orders/{id}/pay", h.pay)
	if h.cfg.AdminToken != "" {
		admin.HandleFunc("POST /admin/items/{id}/restock", h.restock)
	}
}

// Failed authentications allowed per client IP: a burst, then one every
// so often; admins fail rarely, buyers (expired tokens, many behind one
// NAT) more often.
const (
	adminFailBurst = 10
	adminFailEvery = 6 * time.Second
	buyerFailBurst = 20
	buyerFailEvery = 3 * time.Second
)

// authorized reports whether r carries the admin token; otherwise it has
// answered 401, or 429 while r's address has used up its failures (then
// the token is not even compared, so guessing cannot go on).
func (h *Handler) authorized(w http.ResponseWriter, r *http.Request) bool {
	ip := h.proxies.clientIP(r)
	if h.authFails.exhausted(ip) {
		h.m.limited.WithLabelValues("admin_auth").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(adminFailEvery.Seconds())))
		h.fail(w, r, http.StatusTooManyRequests, "too many failed admin authentications from this address")
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && subtle.ConstantTimeCompare([]byte(tok), []byte(h.cfg.AdminToken)) == 1 {
		return true
	}
	h.authFails.allow(ip)
	h.log.Warn().Str("client", ip).Str("path", r.URL.Path).Str("request_id", api.RequestID(r.Context())).Msg("admin authentication failed")
	w.Header().Set("WWW-Authenticate", `Bearer realm="cachesync-admin"`)
	h.fail(w, r, http.StatusUnauthorized, "admin token required")
	return false
}

// buyer returns the verified user of r; otherwise it has answered 401
// (with WWW-Authenticate), or 429 while ip has used up its failures.
func (h *Handler) buyer(w http.ResponseWriter, r *http.Request, ip string) (int64, bool) {
	if h.buyerFails.exhausted(ip) {
		h.m.limited.WithLabelValues("auth").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(buyerFailEvery.Seconds())))
		h.fail(w, r, http.StatusTooManyRequests, "too many failed authentications from this address")
		return 0, false
	}
	if h.auth == nil {
		h.fail(w, r, http.StatusUnauthorized, "authentication required")
		return 0, false
	}
	user, err := h.auth.User(r)
	if err == nil {
		return user, true
	}
	h.buyerFails.allow(ip)
	reason := "claims"
	var f *auth.Failure
	if errors.As(err, &f) {
		reason = f.Reason
	}
	h.m.authFailures.WithLabelValues(reason).Inc()
	h.log.Debug().Err(err).Str("client", ip).Str("path", r.URL.Path).Str("request_id", api.RequestID(r.Context())).Msg("buyer authentication failed")
	w.Header().Set("WWW-Authenticate", h.auth.Challenge(err))
	msg := "invalid or expired credentials"
	if reason == "missing" {
		msg = "authentication required"
	}
	h.fail(w, r, http.StatusUnauthorized, msg)
	return 0, false
}

const maxBody = 4 << 10

// fail answers status with the generic error body (message and request id).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	api.WriteError(w, r, status, msg)
}

// unavailable answers 503 with a generic message; err, the detail (MySQL
// or Redis error text), goes to the log under the request id only.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, what string, err error) {
	h.log.Warn().Err(err).Str("request_id", api.RequestID(r.Context())).Str("path", r.URL.Path).Msg(what)
	w.Header().Set("Retry-After", "1")
	h.fail(w, r, http.StatusServiceUnavailable, "temporarily unavailable, retry shortly")
}

// unknownItem answers 404 for an item id that is no sale item: counted,
// not logged (anyone can send made-up ids), and nothing is started.
func (h *Handler) unknownItem(w http.ResponseWriter, r *http.Request, endpoint string) {
	h.m.unknownItems.WithLabelValues(endpoint).Inc()
	h.fail(w, r, http.StatusNotFound, "unknown item")
}

// decode reads a strict JSON body (api.DecodeJSON) or answers its error.
func (h *Handler) decode(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) bool {
	if err := api.DecodeJSON(w, r, v, maxBody, emptyOK); err != nil {
		h.fail(w, r, err.Status, err.Msg)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) { api.WriteJSON(w, status, v) }

// orderErrorBody is an error about an order the client may look up.
type orderErrorBody struct {
	api.ErrorBody
	Order string `json:"order_id,omitempty"`
}

func orderError(r *http.Request, msg, order string) orderErrorBody {
	return orderErrorBody{api.ErrorBody{Error: msg, RequestID: api.RequestID(r.Context())}, order}
}

// pathItem reads the item id of the path or answers 400.
func (h *Handler) pathItem(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		h.fail(w, r, http.StatusBadRequest, "item id: want a positive integer")
		return 0, false
	}
	return id, true
}

// reservationBody is what POST …/reservations accepts: nothing, or {}.
// A user_id is refused: the user is the authenticated one.
type reservationBody struct {
	User json.RawMessage `json:"user_id"`
}

func (h *Handler) reserve(w http.ResponseWriter, r *http.Request) {
	ip := h.proxies.clientIP(r)
	if !h.perIP.allow(ip) {
		h.m.limited.WithLabelValues("ip").Inc()
		w.Header().Set("Retry-After", "1")
		h.fail(w, r, http.StatusTooManyRequests, "too many requests from this address")
		return
	}
	user, ok := h.buyer(w, r, ip)
	if !ok {
		return
	}
	item, ok := h.pathItem(w, r)
	if !ok {
		return
	}
	if !h.perUser.allow(strconv.FormatInt(user, 10)) {
		h.m.limited.WithLabelValues("user").Inc()
		w.Header().Set("Retry-After", "1")
		h.fail(w, r, http.StatusTooManyRequests, "too many requests for this user")
		return
	}
	var body reservationBody
	if !h.decode(w, r, &body, true) {
		return
	}
	if body.User != nil {
		h.fail(w, r, http.StatusBadRequest, "user_id is not accepted: the user is the authenticated one")
		return
	}
	res, err := h.res.Reserve(r.Context(), item, user)
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, struct {
			Reserved
			Status string `json:"status"`
		}{res, StatusQueued})
	case errors.Is(err, ErrAlreadyBought):
		writeJSON(w, http.StatusConflict, orderError(r, "user already holds a reservation or order for this item", res.Order))
	case errors.Is(err, ErrSoldOut):
		h.fail(w, r, http.StatusGone, "sold out")
	case errors.Is(err, ErrNotReady):
		w.Header().Set("Retry-After", "1")
		h.fail(w, r, http.StatusServiceUnavailable, "item not ready: retry shortly")
	case errors.Is(err, ErrUnknownItem):
		h.unknownItem(w, r, "reservation")
	case errors.Is(err, context.Canceled):
		return // client went away; the reservation was released
	default:
		h.unavailable(w, r, "reservation failed", fmt.Errorf("item %d, user %d: %w", item, user, err))
	}
}

func (h *Handler) item(w http.ResponseWriter, r *http.Request) {
	item, ok := h.pathItem(w, r)
	if !ok {
		return
	}
	k := KeysFor(h.cfg.KeyPrefix, item)
	pipe := h.rdb.Pipeline()
	stock := pipe.Get(r.Context(), k.Stock)
	pending := pipe.ZCard(r.Context(), k.Pending)
	ready := pipe.Exists(r.Context(), k.Ready)
	if _, err := pipe.Exec(r.Context()); err != nil && !errors.Is(err, redis.Nil) {
		h.unavailable(w, r, "item read failed", err)
		return
	}
	if ready.Val() == 0 || errors.Is(stock.Err(), redis.Nil) { // as the reserve script judges it
		known, err := h.res.known.has(r.Context(), item)
		switch {
		case err != nil && !errors.Is(err, errLookupBusy):
			h.unavailable(w, r, "item read failed", err)
		case err == nil && !known:
			h.unknownItem(w, r, "item")
		default:
			w.Header().Set("Retry-After", "1")
			h.fail(w, r, http.StatusServiceUnavailable, "item not ready: retry shortly")
		}
		return
	}
	s, _ := stock.Int64()
	writeJSON(w, http.StatusOK, map[string]any{
		"item_id": item, "stock": s, "pending": pending.Val(), "available": max(0, s-pending.Val()),
	})
}

func (h *Handler) restock(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(w, r) {
		return
	}
	item, ok := h.pathItem(w, r)
	if !ok {
		return
	}
	var body struct {
		Add *int64 `json:"add"`
	}
	if !h.decode(w, r, &body, false) {
		return
	}
	if body.Add == nil || *body.Add == 0 || *body.Add > 1_000_000_000 || *body.Add < -1_000_000_000 {
		h.fail(w, r, http.StatusBadRequest, "add: want a non-zero integer within ±1e9")
		return
	}
	stock, err := h.store.Restock(r.Context(), item, *body.Add)
	switch {
	case errors.Is(err, ErrNotFound):
		h.fail(w, r, http.StatusNotFound, "no such item")
	case errors.Is(err, ErrBelowZero):
		h.fail(w, r, http.StatusConflict, "stock would go below zero: stock "+strconv.FormatInt(stock, 10))
	case err != nil:
		h.unavailable(w, r, "restock failed", err)
	default:
		h.log.Info().Int64("item", item).Int64("add", *body.Add).Int64("stock", stock).Str("request_id", api.RequestID(r.Context())).Msg("restocked (MySQL; CDC carries it to Redis)")
		writeJSON(w, http.StatusOK, map[string]any{"item_id": item, "stock": stock})
	}
}
