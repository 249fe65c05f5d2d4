// Package goods serves GET /goods/{id}: a row of the goods table read
// through the two-level cache, with the X-Cache response header saying
// where it came from (L1, L2, DB), as in seed 003.
package goods

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/cachesync/cachesync/api"
	"github.com/cachesync/cachesync/cache"
	"github.com/rs/zerolog"
	"go.uber.org/fx"
)

// Config says which table backs the endpoint.
type Config struct {
	// Table is "schema.table"; empty disables the endpoint.
	Table string `yaml:"table"`
	// IDColumn is the integer primary key.
	IDColumn string `yaml:"id_column"`
	// KeyPrefix + id is the cache key; an invalidate rule on the table
	// must delete the same key ("goods:{goodsId}" for prefix "goods:").
	KeyPrefix string `yaml:"key_prefix"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.IDColumn == "" {
		c.IDColumn = "id"
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "goods:"
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Table == "" {
		return nil
	}
	if s, t, ok := strings.Cut(c.Table, "."); !ok || s == "" || t == "" || strings.ContainsAny(c.Table, "` ") {
		return fmt.Errorf("goods.table %q: want schema.table", c.Table)
	}
	if strings.ContainsAny(c.IDColumn, "` .") {
		return fmt.Errorf("goods.id_column %q: not a column name", c.IDColumn)
	}
	return nil
}

// Reader is the read path the handler goes through (*cache.Cache).
type Reader interface {
	Get(ctx context.Context, key string, load cache.Loader) ([]byte, cache.Source, error)
}

var _ Reader = (*cache.Cache)(nil)

// Handler serves the endpoint.
type Handler struct {
	cfg   Config
	db    *sql.DB
	cache Reader
	query string
	log   zerolog.Logger
}

// NewHandler builds the handler for a validated, non-empty cfg.
func NewHandler(cfg Config, db *sql.DB, c Reader, log zerolog.Logger) *Handler {
	s, t, _ := strings.Cut(cfg.Table, ".")
	q := fmt.Sprintf("SELECT * FROM `%s`.`%s` WHERE `%s` = ?", s, t, cfg.IDColumn)
	return &Handler{cfg: cfg, db: db, cache: c, query: q, log: log}
}

// ServeHTTP answers GET /goods/{id}.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 0 {
		writeError(w, http.StatusBadRequest, "id must be a non-negative integer")
		return
	}
	val, src, err := h.cache.Get(r.Context(), h.cfg.KeyPrefix+strconv.FormatInt(id, 10), func(ctx context.Context) ([]byte, bool, error) {
		return h.load(ctx, id)
	})
	switch {
	case errors.Is(err, cache.ErrNotFound):
		w.Header().Set("X-Cache", string(src))
		writeError(w, http.StatusNotFound, "no such goods")
	case err != nil:
		h.log.Warn().Err(err).Int64("id", id).Msg("goods read failed")
		writeError(w, http.StatusServiceUnavailable, "temporarily unavailable")
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Cache", string(src))
		_, _ = w.Write(val)
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	b, _ := json.Marshal(map[string]string{"error": msg})
	_, _ = w.Write(b)
}

// load reads the row as a JSON object (column name → value; numbers
// unquoted, text quoted, NULL null).
func (h *Handler) load(ctx context.Context, id int64) ([]byte, bool, error) {
	rows, err := h.db.QueryContext(ctx, h.query, id)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	cols, err := rows.ColumnTypes()
	if err != nil {
		return nil, false, err
	}
	raw := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, false, err
	}
	obj := make(map[string]any, len(cols))
	for i, c := range cols {
		switch {
		case raw[i] == nil:
			obj[c.Name()] = nil
		case isNumber(c.DatabaseTypeName()):
			obj[c.Name()] = json.Number(string(raw[i]))
		default:
			obj[c.Name()] = string(raw[i])
		}
	}
	b, err := json.Marshal(obj)
	return b, true, err
}

func isNumber(t string) bool {
	switch strings.TrimPrefix(t, "UNSIGNED ") {
	case "TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT", "DECIMAL", "FLOAT", "DOUBLE", "YEAR":
		return true
	}
	return false
}

// Module registers GET /goods/{id} on the public listener when goods.table
// is set.
var Module = fx.Module("goods",
	fx.Invoke(func(cfg Config, db *sql.DB, c *cache.Cache, srv *api.Server, log zerolog.Logger) {
		if cfg.Table == "" {
			return
		}
		srv.Public.Handle("GET /goods/{id}", NewHandler(cfg, db, c, log.With().Str("component", "goods").Logger()))
	}),
)
