package seckill

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
)

// An order is shown and paid only for its owner, the authenticated user.
// Someone else's order answers 404 like an unknown one, so order ids
// cannot be probed for existence.

// orderOf authenticates r and reads its order id; otherwise it has
// answered 401/429 or 400.
func (h *Handler) orderOf(w http.ResponseWriter, r *http.Request) (id string, item, user int64, ok bool) {
	user, ok = h.buyer(w, r, h.proxies.clientIP(r))
	if !ok {
		return "", 0, 0, false
	}
	id = r.PathValue("id")
	item, ok = parseOrderID(id)
	if !ok {
		h.fail(w, r, http.StatusBadRequest, "order id: want <item>-<UUIDv7> as returned by the reservation")
		return "", 0, 0, false
	}
	return id, item, user, true
}

// queued reports whether user's reservation id is still pending in Redis
// (reserved, not stored in MySQL yet), with its reservation time. The
// member is looked up exactly (ZSCORE "<order>:<user>"): no pattern.
func (h *Handler) queued(ctx context.Context, item int64, id string, user int64) (time.Time, bool, error) {
	score, err := h.rdb.ZScore(ctx, KeysFor(h.cfg.KeyPrefix, item).Pending, member(id, user)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	return time.UnixMilli(int64(score)).UTC(), true, nil
}

func (h *Handler) order(w http.ResponseWriter, r *http.Request) {
	id, item, user, ok := h.orderOf(w, r)
	if !ok {
		return
	}
	// MySQL, then the pending set, then MySQL again: an order stored and
	// taken out of the pending set between the first two reads is in
	// neither, and would read as unknown.
	for second := false; ; second = true {
		o, err := h.store.Get(r.Context(), id)
		switch {
		case err == nil && o.User == user:
			writeJSON(w, http.StatusOK, o)
			return
		case err == nil:
			h.fail(w, r, http.StatusNotFound, "no such order")
			return
		case !errors.Is(err, ErrNotFound):
			h.unavailable(w, r, "order read failed", err)
			return
		case second:
			h.fail(w, r, http.StatusNotFound, "no such order")
			return
		}
		at, ok, err := h.queued(r.Context(), item, id, user)
		switch {
		case err != nil:
			h.unavailable(w, r, "order read failed", err)
			return
		case ok:
			writeJSON(w, http.StatusOK, Order{ID: id, User: user, Item: item, Status: StatusQueued, ReservedAt: at})
			return
		}
	}
}

func (h *Handler) pay(w http.ResponseWriter, r *http.Request) {
	id, item, user, ok := h.orderOf(w, r)
	if !ok {
		return
	}
	var body struct{} // nothing, or {}
	if !h.decode(w, r, &body, true) {
		return
	}
	o, paid, err := h.store.Pay(r.Context(), id, user)
	if errors.Is(err, ErrNotFound) {
		_, ok, err = h.queued(r.Context(), item, id, user)
		switch {
		case err != nil:
			h.unavailable(w, r, "payment failed", err)
		case ok:
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusConflict, orderError(r, "order not stored yet (queued): retry shortly", id))
		default:
			h.fail(w, r, http.StatusNotFound, "no such order")
		}
		return
	}
	switch {
	case err != nil:
		h.unavailable(w, r, "payment failed", err)
	case paid || o.Status == StatusPaid:
		writeJSON(w, http.StatusOK, o)
	default:
		writeJSON(w, http.StatusConflict, orderError(r, "order is "+o.Status+", not payable", id))
	}
}
