package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"net/http"
)

// RequestIDHeader carries a request's id, in the request (from a client or
// a proxy, kept when short and safe) and in every answer.
const RequestIDHeader = "X-Request-Id"

type requestIDKey struct{}

// maxRequestID bounds a client-supplied request id.
const maxRequestID = 64

// WithRequestID gives every request an id (the client's X-Request-Id when
// it is 1..64 characters of letters, digits, '-', '_', '.', ':', else a new
// random one), in its context and in the answer's X-Request-Id header.
// Error bodies carry it and the log lines with the details name it.
func WithRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !safeRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

func safeRequestID(s string) bool {
	if s == "" || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// newRequestID is 128 random bits in hex. It only has to be unique, not
// secret: math/rand/v2's generator (ChaCha8, seeded per process) is fast
// and does not repeat in practice.
func newRequestID() string {
	var b [16]byte
	for i := 0; i < len(b); i += 8 {
		v := rand.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return hex.EncodeToString(b[:])
}

// RequestID is the id WithRequestID gave r's context ("" outside it).
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// ErrorBody is the JSON body of every 4xx and 5xx answer of cachesync's
// endpoints: a generic message and the request id; the details, if any,
// are in the log under the same request_id. An endpoint that documents
// more members embeds it.
type ErrorBody struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id"`
}

// WriteError answers status with an ErrorBody of msg.
func WriteError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	WriteJSON(w, status, ErrorBody{Error: msg, RequestID: RequestID(r.Context())})
}

// WriteJSON answers status with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
