package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDecodeJSON: only one JSON object of known, distinct keys, sent as
// application/json without Content-Encoding, is decoded.
func TestDecodeJSON(t *testing.T) {
	type body struct {
		Add  *int64 `json:"add"`
		Note string `json:"note"`
	}
	const js = "application/json"
	for _, tc := range []struct {
		name, ct, ce, body string
		emptyOK            bool
		status             int
		msg                string
	}{
		{"ok", js, "", `{"add":3,"note":"x"}`, false, 0, ""},
		{"charset", "application/json; charset=UTF-8", "", `{"add":3}`, false, 0, ""},
		{"empty allowed", "", "", ``, true, 0, ""},
		{"empty allowed with type", js, "", ` `, true, 0, ""},
		{"empty refused", js, "", ``, false, 400, "empty body"},
		{"form", "application/x-www-form-urlencoded", "", `{"add":3}`, false, 415, "Content-Type"},
		{"text", "text/plain", "", `{"add":3}`, false, 415, "Content-Type"},
		{"other charset", "application/json; charset=latin1", "", `{"add":3}`, false, 415, "Content-Type"},
		{"no type", "", "", `{"add":3}`, false, 415, "Content-Type"},
		{"no type, empty ok but body", "", "", `{}`, true, 415, "Content-Type"},
		{"gzip", js, "gzip", `{"add":3}`, false, 415, "Content-Encoding"},
		{"identity", js, "identity", `{"add":3}`, false, 415, "Content-Encoding"},
		{"too big", js, "", `{"note":"` + strings.Repeat("x", 200) + `"}`, false, 413, "larger than 100 bytes"},
		{"duplicate", js, "", `{"add":1,"add":-1}`, false, 400, `duplicate key "add"`},
		{"nested duplicate", js, "", `{"add":1,"note":"x","x":{"a":1,"a":2}}`, false, 400, `duplicate key "a"`},
		{"trailing object", js, "", `{"add":1}{"add":2}`, false, 400, "exactly one"},
		{"trailing garbage", js, "", `{"add":1} x`, false, 400, "exactly one"},
		{"array", js, "", `[{"add":1}]`, false, 400, "want a JSON object"},
		{"not JSON", js, "", `add=1`, false, 400, "not valid JSON"},
		{"truncated", js, "", `{"add":1`, false, 400, "not valid JSON"},
		{"unknown", js, "", `{"add":1,"user_id":2}`, false, 400, `unknown field "user_id"`},
		{"case folded", js, "", `{"ADD":1}`, false, 400, `unknown field "ADD"`},
		{"wrong type", js, "", `{"add":"1"}`, false, 400, `field "add": wrong type`},
		{"not UTF-8", js, "", "{\"note\":\"\xff\"}", false, 400, "UTF-8"},
		{"deep", js, "", `{"note":"x","x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, false, 400, "nested deeper"},
	} {
		r := httptest.NewRequest("POST", "/", strings.NewReader(tc.body))
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		if tc.ce != "" {
			r.Header.Set("Content-Encoding", tc.ce)
		}
		var b body
		err := DecodeJSON(httptest.NewRecorder(), r, &b, 100, tc.emptyOK)
		switch {
		case tc.status == 0 && err != nil:
			t.Errorf("%s: %d %s, want accepted", tc.name, err.Status, err.Msg)
		case tc.status != 0 && err == nil:
			t.Errorf("%s: accepted (%+v), want %d", tc.name, b, tc.status)
		case tc.status != 0 && (err.Status != tc.status || !strings.Contains(err.Msg, tc.msg)):
			t.Errorf("%s: %d %q, want %d with %q", tc.name, err.Status, err.Msg, tc.status, tc.msg)
		}
	}
}

// TestRequestID: a safe client id is kept, anything else replaced by a
// fresh one; the id is in the header and in the error body.
func TestRequestID(t *testing.T) {
	h := WithRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, http.StatusTeapot, "generic")
	}))
	for _, tc := range []struct {
		in   string
		keep bool
	}{
		{"abc-123_x.y:z", true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"a b", false},
		{"a\"b", false},
		{"<script>", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		if tc.in != "" {
			r.Header.Set(RequestIDHeader, tc.in)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		id := w.Header().Get(RequestIDHeader)
		if tc.keep && id != tc.in || !tc.keep && (id == tc.in || len(id) != 32) {
			t.Errorf("client id %q: answered %q", tc.in, id)
		}
		if want := `{"error":"generic","request_id":"` + id + `"}` + "\n"; w.Body.String() != want {
			t.Errorf("body %q, want %q", w.Body, want)
		}
	}
}
