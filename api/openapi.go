package api

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the OpenAPI 3 document of both listeners' endpoints, served
// at GET /openapi.json on the admin listener. It is written by hand, not
// generated: tests drive every documented endpoint on a real daemon and
// validate each request and answer against it, and another compares its
// paths with every route the code registers, so the two cannot drift.
//
//go:embed openapi.json
var OpenAPI []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(OpenAPI)
}
