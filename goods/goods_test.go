package goods

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/cache"
	"github.com/rs/zerolog"
)

// reader answers like the read path would, without servers: the handler's
// own job is the HTTP mapping.
type reader struct {
	val []byte
	src cache.Source
	err error
	key string
}

func (r *reader) Get(_ context.Context, key string, _ cache.Loader) ([]byte, cache.Source, error) {
	r.key = key
	return r.val, r.src, r.err
}

func TestHandler(t *testing.T) {
	cfg := Config{Table: "shop.t_goods", IDColumn: "goodsId"}
	cfg.SetDefaults()
	tests := []struct {
		name, path string
		r          reader
		code       int
		xcache     string
		body       string
		key        string
	}{
		{"hit", "/goods/7", reader{val: []byte(`{"goodsId":7}`), src: cache.FromL1}, 200, "L1", `{"goodsId":7}`, "goods:7"},
		{"db", "/goods/8", reader{val: []byte(`{}`), src: cache.FromDB}, 200, "DB", `{}`, "goods:8"},
		{"not found", "/goods/9", reader{src: cache.FromL2, err: cache.ErrNotFound}, 404, "L2", `no such goods`, "goods:9"},
		{"down", "/goods/1", reader{err: errors.New("redis down")}, 503, "", `temporarily unavailable, retry shortly`, "goods:1"},
		{"bad id", "/goods/abc", reader{}, 400, "", `id must be a non-negative integer`, ""},
		{"negative id", "/goods/-1", reader{}, 400, "", `id must be a non-negative integer`, ""},
		{"huge id", "/goods/99999999999999999999", reader{}, 400, "", `id must be a non-negative integer`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.Handle("GET /goods/{id}", NewHandler(cfg, nil, &tt.r, zerolog.Nop()))
			w := httptest.NewRecorder()
			api.WithRequestID(mux).ServeHTTP(w, httptest.NewRequest("GET", tt.path, nil))
			body := w.Body.String()
			if tt.code >= 400 {
				// The generic error body: the message and the request id
				// of the X-Request-Id header, nothing else.
				var e map[string]string
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || len(e) != 2 || e["request_id"] == "" || e["request_id"] != w.Header().Get("X-Request-Id") {
					t.Fatalf("error body %s (X-Request-Id %q): want error and request_id", body, w.Header().Get("X-Request-Id"))
				}
				body = e["error"]
			}
			if w.Code != tt.code || w.Header().Get("X-Cache") != tt.xcache || body != tt.body {
				t.Fatalf("got %d X-Cache=%q %s; want %d %q %s", w.Code, w.Header().Get("X-Cache"), w.Body, tt.code, tt.xcache, tt.body)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if tt.r.key != tt.key {
				t.Fatalf("read key %q, want %q", tt.r.key, tt.key)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, bad := range []Config{{Table: "nodot"}, {Table: "a.b`c"}, {Table: "a.b", IDColumn: "x y"}} {
		bad.SetDefaults()
		if bad.Validate() == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
	ok := Config{}
	ok.SetDefaults()
	if err := ok.Validate(); err != nil {
		t.Errorf("empty table (endpoint off): %v", err)
	}
}
