package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"unicode/utf8"
)

// BodyError is a request body DecodeJSON refused: the status (400, 413
// or 415) and a message safe to show the client.
type BodyError struct {
	Status int
	Msg    string
}

func (e *BodyError) Error() string { return e.Msg }

func bodyErr(status int, format string, a ...any) *BodyError {
	return &BodyError{Status: status, Msg: fmt.Sprintf(format, a...)}
}

// maxDepth bounds the nesting of a JSON body.
const maxDepth = 32

// DecodeJSON reads r's body, at most max bytes, into v, a pointer to a
// struct of json-tagged fields, strictly:
//   - any Content-Encoding: 415 (bodies are small; nothing is inflated);
//   - a Content-Type other than application/json (charset utf-8 at
//     most): 415; none at all only for an empty body;
//   - an empty body: 400, unless emptyOK (then v is left as it is);
//   - longer than max: 413;
//   - not UTF-8, not one JSON object, data after it, a duplicate key at
//     any depth (encoding/json would silently keep the last), a key that
//     is not exactly one of v's fields, a value of the wrong type: 400.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, max int64, emptyOK bool) *BodyError {
	if len(r.Header.Values("Content-Encoding")) > 0 {
		return bodyErr(http.StatusUnsupportedMediaType, "Content-Encoding is not supported: send the body uncompressed")
	}
	ct := r.Header.Get("Content-Type")
	if ct != "" && !isJSONType(ct) {
		return bodyErr(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return bodyErr(http.StatusRequestEntityTooLarge, "body larger than %d bytes", max)
		}
		return bodyErr(http.StatusBadRequest, "body could not be read")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if emptyOK {
			return nil
		}
		return bodyErr(http.StatusBadRequest, "empty body: want a JSON object")
	}
	if ct == "" {
		return bodyErr(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	if !utf8.Valid(data) {
		return bodyErr(http.StatusBadRequest, "body is not UTF-8")
	}
	keys, berr := checkObject(data)
	if berr != nil {
		return berr
	}
	fields := jsonFields(v)
	for _, k := range keys {
		if !fields[k] {
			return bodyErr(http.StatusBadRequest, "unknown field %q", k)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return bodyErr(http.StatusBadRequest, "field %q: wrong type", te.Field)
		}
		return bodyErr(http.StatusBadRequest, "body: not a valid JSON object")
	}
	return nil
}

func isJSONType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// checkObject makes sure data is exactly one JSON object without
// duplicate keys at any depth, and returns its top-level keys.
func checkObject(data []byte) ([]string, *BodyError) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, bodyErr(http.StatusBadRequest, "body: not valid JSON")
	}
	if tok != json.Delim('{') {
		return nil, bodyErr(http.StatusBadRequest, "body: want a JSON object")
	}
	keys, berr := walkObject(dec, 1)
	if berr != nil {
		return nil, berr
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bodyErr(http.StatusBadRequest, "body: want exactly one JSON object, found more after it")
	}
	return keys, nil
}

// walkObject reads an object's members after its '{', through its '}'.
func walkObject(dec *json.Decoder, depth int) ([]string, *BodyError) {
	if depth > maxDepth {
		return nil, bodyErr(http.StatusBadRequest, "body: nested deeper than %d", maxDepth)
	}
	var keys []string
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bodyErr(http.StatusBadRequest, "body: not valid JSON")
		}
		k, _ := tok.(string)
		if seen[k] {
			return nil, bodyErr(http.StatusBadRequest, "body: duplicate key %q", k)
		}
		seen[k] = true
		keys = append(keys, k)
		if berr := walkValue(dec, depth); berr != nil {
			return nil, berr
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, bodyErr(http.StatusBadRequest, "body: not valid JSON")
	}
	return keys, nil
}

func walkValue(dec *json.Decoder, depth int) *BodyError {
	tok, err := dec.Token()
	if err != nil {
		return bodyErr(http.StatusBadRequest, "body: not valid JSON")
	}
	switch tok {
	case json.Delim('{'):
		_, berr := walkObject(dec, depth+1)
		return berr
	case json.Delim('['):
		if depth+1 > maxDepth {
			return bodyErr(http.StatusBadRequest, "body: nested deeper than %d", maxDepth)
		}
		for dec.More() {
			if berr := walkValue(dec, depth+1); berr != nil {
				return berr
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return bodyErr(http.StatusBadRequest, "body: not valid JSON")
		}
	}
	return nil
}

// jsonFields are the exact member names of the struct v points to
// (encoding/json would also match them case-insensitively).
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	fields := map[string]bool{}
	if t.Kind() != reflect.Struct {
		return fields
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = true
	}
	return fields
}
