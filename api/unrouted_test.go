package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// A request no route takes gets the JSON error body with its request id,
// like every other error, not ServeMux's plain text: 404 for an unknown
// path, 405 with Allow for another method. Routed requests and ServeMux's
// redirects to canonical paths are unchanged.
func TestUnroutedJSON(t *testing.T) {
	s := startServer(t, testPublic(nil), testAdmin(nil), nil)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		method, path string
		status       int
		allow, msg   string
	}{
		{"GET", "/nope", http.StatusNotFound, "", "no such endpoint"},
		{"DELETE", "/ok", http.StatusMethodNotAllowed, "GET, HEAD", "method not allowed"},
		{"GET", "/ok", http.StatusOK, "", ""},
		{"GET", "/a/../ok", http.StatusTemporaryRedirect, "", ""}, // ServeMux's own redirect to /ok
	} {
		req, _ := http.NewRequest(tc.method, "http://"+s.PublicAddr().String()+tc.path, nil)
		req.URL.Opaque = tc.path // keep "/a/../ok" as sent
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
			continue
		}
		if tc.msg == "" {
			continue
		}
		var e ErrorBody
		if err := json.Unmarshal(body, &e); err != nil || e.Error != tc.msg || e.RequestID == "" || e.RequestID != resp.Header.Get(RequestIDHeader) {
			t.Errorf("%s %s: body %q, want {\"error\":%q} with the request id", tc.method, tc.path, body, tc.msg)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, ct)
		}
		if got := resp.Header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
}
