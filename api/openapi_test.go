package api

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("invalid OpenAPI document: %v", err)
	}
	return doc
}

// TestOpenAPIServed: the admin listener serves the embedded document, a
// valid OpenAPI 3 one; the public listener does not.
func TestOpenAPIServed(t *testing.T) {
	loadOpenAPI(t)
	reg := prometheus.NewRegistry()
	s, err := NewServer(testPublic(nil), testAdmin(nil), NewHealth(time.Second, time.Second), reg, reg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	s.Admin.ServeHTTP(w, httptest.NewRequest("GET", "/openapi.json", nil))
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" || w.Body.String() != string(OpenAPI) {
		t.Fatalf("admin /openapi.json: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	w = httptest.NewRecorder()
	s.Public.ServeHTTP(w, httptest.NewRequest("GET", "/openapi.json", nil))
	if w.Code != http.StatusNotFound {
		t.Fatalf("public /openapi.json: %d, want 404", w.Code)
	}
}

// undocumented are route patterns the code registers that the document
// leaves out on purpose: Go's profiler.
func undocumented(pattern string) bool { return strings.HasPrefix(pattern, "/debug/pprof/") }

// TestOpenAPIRoutes: every route pattern the module's code registers
// (Handle or HandleFunc with a literal "METHOD /path" pattern, in any
// non-test file) is an operation of the document, and every operation is
// registered somewhere, so that adding or renaming a route without
// documenting it fails here. The seckill package's conformance test then
// checks each operation against the muxes of a running daemon.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	var spec []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			spec = append(spec, method+" "+path)
		}
	}
	code := map[string]string{} // pattern → where
	fset := token.NewFileSet()
	err := filepath.WalkDir("..", func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if n := e.Name(); n != ".." && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			if p, err := strconv.Unquote(lit.Value); err == nil && strings.Contains(p, "/") && !undocumented(p) {
				code[p] = fset.Position(lit.Pos()).String()
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(code) < 5 {
		t.Fatalf("found only %d routes in the code: the scan is broken", len(code))
	}
	for p, where := range code {
		if !slices.Contains(spec, p) {
			t.Errorf("%s: route %q is not in api/openapi.json (document it, with a method)", where, p)
		}
	}
	for _, p := range spec {
		if _, ok := code[p]; !ok {
			t.Errorf("api/openapi.json documents %q, which no code registers", p)
		}
	}
}
