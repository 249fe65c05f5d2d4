package seckill

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Handler serves the sale's HTTP endpoints.
type Handler struct {
	cfg     Config
	res     *Reserver
	store   *Store
	rdb     redis.UniversalClient
	perUser *limiter
	perIP   *limiter
	// authFails counts failed admin authentications per client IP: past
	// its burst, admin requests from that IP get 429 without a token check.
	authFails *limiter
	m         *metrics
	log       zerolog.Logger
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

// Failed admin authentications allowed per client IP: a burst, then one
// every adminFailEvery.
const (
	adminFailBurst = 10
	adminFailEvery = 6 * time.Second
)

// authorized reports whether r carries the admin token; otherwise it has
// answered 401, or 429 while r's address has used up its failures (then
// the token is not even compared, so guessing cannot go on).
func (h *Handler) authorized(w http.ResponseWriter, r *http.Request) bool {
	ip := clientIP(r)
	if h.authFails.exhausted(ip) {
		h.m.limited.WithLabelValues("admin_auth").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(adminFailEvery.Seconds())))
		fail(w, http.StatusTooManyRequests, "too many failed admin authentications from this address")
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && subtle.ConstantTimeCompare([]byte(tok), []byte(h.cfg.AdminToken)) == 1 {
		return true
	}
	h.authFails.allow(ip)
	h.log.Warn().Str("client", ip).Str("path", r.URL.Path).Msg("admin authentication failed")
	w.Header().Set("WWW-Authenticate", "Bearer")
	fail(w, http.StatusUnauthorized, "admin token required")
	return false
}

const maxBody = 4 << 10

type apiError struct {
	Error string `json:"error"`
	Order string `json:"order_id,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, apiError{Error: fmt.Sprintf(format, args...)})
}

// decodeBody reads a small JSON object strictly into v.
func decodeBody(r *http.Request, w http.ResponseWriter, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return fmt.Errorf("body larger than %d bytes", maxBody)
		case errors.Is(err, io.EOF):
			return errors.New("empty body: want a JSON object")
		}
		return fmt.Errorf("body: %v", err)
	}
	if dec.More() {
		return errors.New("body: want exactly one JSON object")
	}
	return nil
}

func pathID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("item id %q: want a positive integer", s)
	}
	return id, nil
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (h *Handler) reserve(w http.ResponseWriter, r *http.Request) {
	item, err := pathID(r)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	var body struct {
		User *int64 `json:"user_id"`
	}
	if err := decodeBody(r, w, &body); err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	if body.User == nil || *body.User <= 0 {
		fail(w, http.StatusBadRequest, "user_id: want a positive integer")
		return
	}
	if !h.perIP.allow(clientIP(r)) {
		h.m.limited.WithLabelValues("ip").Inc()
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusTooManyRequests, "too many requests from this address")
		return
	}
	if !h.perUser.allow(strconv.FormatInt(*body.User, 10)) {
		h.m.limited.WithLabelValues("user").Inc()
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusTooManyRequests, "too many requests for this user")
		return
	}
	res, err := h.res.Reserve(r.Context(), item, *body.User)
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, struct {
			Reserved
			Status string `json:"status"`
		}{res, StatusQueued})
	case errors.Is(err, ErrAlreadyBought):
		writeJSON(w, http.StatusConflict, apiError{Error: "user already holds a reservation or order for this item", Order: res.Order})
	case errors.Is(err, ErrSoldOut):
		fail(w, http.StatusGone, "sold out")
	case errors.Is(err, ErrNotReady):
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusServiceUnavailable, "%v", err)
	case errors.Is(err, context.Canceled):
		return // client went away; the reservation was released
	default:
		h.log.Warn().Err(err).Int64("item", item).Msg("reservation failed")
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusServiceUnavailable, "%v", err)
	}
}

func (h *Handler) item(w http.ResponseWriter, r *http.Request) {
	item, err := pathID(r)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	k := KeysFor(h.cfg.KeyPrefix, item)
	pipe := h.rdb.Pipeline()
	stock := pipe.Get(r.Context(), k.Stock)
	pending := pipe.ZCard(r.Context(), k.Pending)
	ready := pipe.Exists(r.Context(), k.Ready)
	if _, err := pipe.Exec(r.Context()); err != nil && !errors.Is(err, redis.Nil) {
		fail(w, http.StatusServiceUnavailable, "redis: %v", err)
		return
	}
	if ready.Val() == 0 {
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusServiceUnavailable, "%v", ErrNotReady)
		return
	}
	s, _ := stock.Int64()
	writeJSON(w, http.StatusOK, map[string]any{
		"item_id": item, "stock": s, "pending": pending.Val(), "available": max(0, s-pending.Val()),
	})
}

func (h *Handler) order(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	item, ok := itemOfOrder(id)
	if !ok {
		fail(w, http.StatusBadRequest, "order id %q: want <item>-<uuid>", id)
		return
	}
	o, err := h.store.Get(r.Context(), id)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, o)
		return
	case !errors.Is(err, ErrNotFound):
		fail(w, http.StatusServiceUnavailable, "mysql: %v", err)
		return
	}
	// No row yet: queued if still pending in Redis.
	k := KeysFor(h.cfg.KeyPrefix, item)
	ms, _, err := h.rdb.ZScan(r.Context(), k.Pending, 0, id+":*", 100).Result()
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "redis: %v", err)
		return
	}
	for i := 0; i+1 < len(ms); i += 2 {
		if o, u, ok := parseMember(ms[i]); ok && o == id {
			score, _ := strconv.ParseFloat(ms[i+1], 64)
			writeJSON(w, http.StatusOK, Order{ID: id, User: u, Item: item, Status: StatusQueued, ReservedAt: time.UnixMilli(int64(score)).UTC()})
			return
		}
	}
	fail(w, http.StatusNotFound, "no order %s", id)
}

func (h *Handler) pay(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := itemOfOrder(id); !ok {
		fail(w, http.StatusBadRequest, "order id %q: want <item>-<uuid>", id)
		return
	}
	o, paid, err := h.store.Pay(r.Context(), id)
	switch {
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusConflict, apiError{Error: "order not stored yet (queued) or unknown: retry shortly", Order: id})
	case err != nil:
		fail(w, http.StatusServiceUnavailable, "mysql: %v", err)
	case paid || o.Status == StatusPaid:
		writeJSON(w, http.StatusOK, o)
	default:
		writeJSON(w, http.StatusConflict, apiError{Error: "order is " + o.Status + ", not payable", Order: id})
	}
}

func (h *Handler) restock(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(w, r) {
		return
	}
	item, err := pathID(r)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	var body struct {
		Add *int64 `json:"add"`
	}
	if err := decodeBody(r, w, &body); err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	if body.Add == nil || *body.Add == 0 || *body.Add > 1_000_000_000 || *body.Add < -1_000_000_000 {
		fail(w, http.StatusBadRequest, "add: want a non-zero integer within ±1e9")
		return
	}
	stock, err := h.store.Restock(r.Context(), item, *body.Add)
	switch {
	case errors.Is(err, ErrNotFound):
		fail(w, http.StatusNotFound, "no item %d", item)
	case errors.Is(err, ErrBelowZero):
		fail(w, http.StatusConflict, "%v", err)
	case err != nil:
		fail(w, http.StatusServiceUnavailable, "mysql: %v", err)
	default:
		h.log.Info().Int64("item", item).Int64("add", *body.Add).Int64("stock", stock).Msg("restocked (MySQL; CDC carries it to Redis)")
		writeJSON(w, http.StatusOK, map[string]any{"item_id": item, "stock": stock})
	}
}
