package api

import "net/http"

// jsonUnrouted answers the requests no route of mux takes, 404 (no such
// path) or 405 (another method; with ServeMux's Allow header), with the
// JSON error body and request id of every other error instead of
// ServeMux's plain text. Routed requests, and its redirects to canonical
// paths, go to mux as they are.
func jsonUnrouted(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := "no such endpoint"
		if rec.status == http.StatusMethodNotAllowed {
			msg = "method not allowed"
		}
		WriteError(w, r, rec.status, msg)
	})
}

// statusRecorder keeps a handler's status and headers, and drops its body.
type statusRecorder struct {
	header http.Header
	status int
	wrote  bool
}

func (s *statusRecorder) Header() http.Header { return s.header }

func (s *statusRecorder) WriteHeader(status int) {
	if !s.wrote {
		s.status, s.wrote = status, true
	}
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(b), nil
}
