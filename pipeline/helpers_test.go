package pipeline_test

// Shared harness of the pipeline integration tests: real MariaDB and Redis
// servers (internal/testenv), a Pipeline run in-process exactly as the
// daemon wires it, and an oracle that derives from MySQL's rows what Redis
// must hold.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachesync/cachesync/binlog"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/leader"
	"github.com/cachesync/cachesync/pipeline"
	"github.com/cachesync/cachesync/sink"
	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Servers shared by the tests that do not restart them. Each test uses its
// own database and its own key prefix and channel. The suite runs on one
// Redis, or with CACHESYNC_TEST_REDIS_MODE=cluster on a Redis Cluster (see
// testenv.ClusterMode): then sharedCluster is set and sharedRedis is nil.
var (
	sharedMariaDB *testenv.MariaDB
	sharedRedis   *testenv.Redis
	sharedCluster *testenv.RedisCluster
)

func TestMain(m *testing.M) {
	var err error
	if sharedMariaDB, err = testenv.NewMariaDB(); err != nil {
		fmt.Fprintln(os.Stderr, "start MariaDB:", err)
		os.Exit(1)
	}
	if testenv.ClusterMode() {
		sharedCluster, err = testenv.NewRedisCluster()
	} else {
		sharedRedis, err = testenv.NewRedis()
	}
	if err != nil {
		sharedMariaDB.Close()
		fmt.Fprintln(os.Stderr, "start Redis:", err)
		os.Exit(1)
	}
	code := m.Run()
	sharedMariaDB.Close()
	if sharedCluster != nil {
		sharedCluster.Close()
	} else {
		sharedRedis.Close()
	}
	os.Exit(code)
}

// standaloneOnly skips t on a cluster run: t needs a private standalone
// Redis (it kills, pauses or reconfigures it). covered says what covers
// the same on a Redis Cluster.
func standaloneOnly(t *testing.T, covered string) {
	t.Helper()
	if sharedCluster != nil {
		t.Skip("standalone only: " + covered)
	}
}

// env is one test's slice of the servers.
type env struct {
	t      *testing.T
	my     *testenv.MariaDB
	rs     *testenv.Redis // nil on the shared Redis Cluster
	schema string
	db     *sql.DB               // the test's database, for the workload
	pdb    *sql.DB               // the pipeline's connection (no database), as the daemon opens it
	rdb    redis.UniversalClient // a *redis.ClusterClient on the shared cluster
	p      string                // prefix of application keys
	ks     keyspace.Keyspace
	chann  string
	// noSchemaCheck skips Rules.CheckSchema in start (the daemon runs it
	// at start-up; a test may want the pipeline's own behaviour).
	noSchemaCheck bool
	// leaseTTL is the CDC lease's ha.lease_ttl (0: the default).
	leaseTTL time.Duration
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// newEnv prepares a database and key prefixes named after the test, on the
// given servers (nil: the shared ones; on a cluster run, the shared Redis
// Cluster, with the keyspace of source "main" the daemon uses there).
func newEnv(t *testing.T, my *testenv.MariaDB, rs *testenv.Redis) *env {
	t.Helper()
	if my == nil {
		my = sharedMariaDB
	}
	if rs == nil {
		rs = sharedRedis
	}
	name := strings.Trim(nonWord.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	e := &env{t: t, my: my, rs: rs, schema: "t_" + name, p: name + ":", chann: name + ":inv"}
	e.ks = keyspace.Keyspace{Prefix: name + ":cs:"}
	admin := openDB(t, my, "")
	if _, err := admin.Exec("DROP DATABASE IF EXISTS " + e.schema); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec("CREATE DATABASE " + e.schema + " CHARACTER SET utf8mb4"); err != nil {
		t.Fatal(err)
	}
	e.db = openDB(t, my, e.schema)
	e.pdb = openDB(t, my, "")
	if rs == nil {
		// As the daemon's (internal/daemon.NewRedisClient).
		e.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: sharedCluster.Addrs(),
			ContextTimeoutEnabled: true, ClusterStateReloadInterval: time.Second})
		e.ks.Source, e.ks.Cluster = "main", true
	} else {
		e.rdb = redis.NewClient(&redis.Options{Addr: rs.Addr(), ContextTimeoutEnabled: true}) // as the daemon's
	}
	t.Cleanup(func() { e.rdb.Close() })
	// Keys left by an earlier run of the same test (go test -count=N).
	ctx := context.Background()
	keys, err := scanKeys(ctx, e.rdb, e.p+"*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := e.rdb.Del(ctx, k).Err(); err != nil {
			t.Fatal(err)
		}
	}
	e.exec("CREATE TABLE _marker (id INT PRIMARY KEY, n BIGINT NOT NULL)")
	return e
}

// scanKeys returns the keys matching pattern: SCAN of the Redis, or of
// every master of a cluster.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
		return keys, err
	}
	return keys, scan(ctx, rdb)
}

// openDB opens a pool like the daemon's: text values, no parseTime.
func openDB(t *testing.T, my *testenv.MariaDB, schema string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", "root@tcp("+my.Addr()+")/"+schema+"?interpolateParams=true&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	t.Cleanup(func() { db.Close() })
	return db
}

func (e *env) exec(qs ...string) {
	e.t.Helper()
	for _, q := range qs {
		if _, err := e.db.Exec(q); err != nil {
			e.t.Fatalf("%s: %v", q, err)
		}
	}
}

// tx runs statements in one transaction.
func (e *env) tx(qs ...string) {
	e.t.Helper()
	if err := runTx(e.db, qs...); err != nil {
		e.t.Fatal(err)
	}
}

func runTx(db *sql.DB, qs ...string) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	for _, q := range qs {
		if _, err := tx.Exec(q); err != nil {
			tx.Rollback()
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return tx.Commit()
}

func (e *env) position() binlog.Position {
	e.t.Helper()
	pos, err := binlog.CurrentPosition(context.Background(), e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	return pos
}

func (e *env) checkpoint() (sink.Checkpoint, bool) {
	e.t.Helper()
	cp, ok, err := sink.ReadCheckpoint(context.Background(), e.rdb, e.ks)
	if err != nil {
		e.t.Fatal(err)
	}
	return cp, ok
}

// lease is a new CDC lease of this test's keyspace, as the daemon makes it.
func (e *env) lease(reg prometheus.Registerer, log zerolog.Logger) *leader.Lease {
	cfg := leader.Config{LeaseTTL: e.leaseTTL}
	cfg.SetDefaults()
	return leader.New(cfg, e.rdb, e.ks, log, reg).Lease(pipeline.LeaseName)
}

var serverIDs atomic.Uint32

func init() { serverIDs.Store(1000) }

// run is one Pipeline running in the background.
type run struct {
	p      *pipeline.Pipeline
	a      *sink.Applier
	reg    *prometheus.Registry
	log    *logBuffer
	cancel context.CancelFunc
	done   chan struct{}
	err    error // valid after done is closed
}

// start builds a pipeline as the daemon does and runs it until stop or
// the end of the test. mod may adjust the configurations.
func (e *env) start(rules []sink.RuleConfig, mod func(*binlog.Config, *sink.Config)) *run {
	e.t.Helper()
	bcfg := binlog.Config{Addr: e.my.Addr(), User: "root", Flavor: "mariadb", ServerID: serverIDs.Add(1),
		Heartbeat: time.Second, Start: binlog.StartConfig{From: binlog.FromCheckpoint}}
	scfg := sink.Config{KeyPrefix: e.ks.Prefix, Source: e.ks.Source, Cluster: e.ks.Cluster, Channel: e.chann, Rules: rules}
	if mod != nil {
		mod(&bcfg, &scfg)
	}
	bcfg.SetDefaults()
	scfg.SetDefaults()
	if err := bcfg.Validate(); err != nil {
		e.t.Fatal(err)
	}
	if err := scfg.Validate(); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := binlog.CheckServer(ctx, e.pdb)
	if err != nil {
		e.t.Fatal(err)
	}
	if info.Flavor != "mariadb" {
		e.t.Fatalf("server flavor %q, want mariadb", info.Flavor)
	}
	r := &run{reg: prometheus.NewRegistry(), log: &logBuffer{}, done: make(chan struct{})}
	log := zerolog.New(r.log).With().Timestamp().Logger()
	if r.a, err = sink.NewApplier(scfg, e.rdb, log.With().Str("component", "sink").Logger(), r.reg); err != nil {
		e.t.Fatal(err)
	}
	if !e.noSchemaCheck {
		if err := r.a.Rules().CheckSchema(ctx, e.pdb); err != nil {
			e.t.Fatal(err)
		}
	}
	r.p = pipeline.New(bcfg, info.Flavor, e.pdb, r.a, e.lease(r.reg, log.With().Str("component", "leader").Logger()), scfg.BatchChanges, log, r.reg)
	runCtx, runCancel := context.WithCancel(context.Background())
	r.cancel = runCancel
	go func() {
		defer close(r.done)
		r.err = r.p.Run(runCtx)
	}()
	e.t.Cleanup(func() {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			e.t.Error("pipeline did not stop within 30s of cancel")
		}
		if e.t.Failed() {
			e.t.Logf("pipeline log (last lines):\n%s", r.log.tail(40))
		}
	})
	return r
}

// stop cancels the pipeline and returns what Run returned.
func (r *run) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline did not stop within 30s of cancel")
		return nil
	}
}

// ready waits until the pipeline leads and streams (after its snapshot,
// if any). Ready alone is not enough: a standby is ready too.
func (r *run) ready(t *testing.T) {
	t.Helper()
	r.readyWithin(t, 30*time.Second)
}

// readyWithin is ready with another limit (a snapshot of large values,
// under the race detector, on a loaded machine).
func (r *run) readyWithin(t *testing.T, d time.Duration) {
	t.Helper()
	waitFor(t, func() error {
		r.failIfStopped(t)
		if role := r.p.Role(); role != "leader" {
			return errors.New("pipeline is " + role)
		}
		return r.p.Ready()
	}, d)
}

func (r *run) failIfStopped(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		t.Fatalf("pipeline stopped: Run returned %v\n%s", r.err, r.log.tail(20))
	default:
	}
}

// metric returns the value of a counter or gauge the pipeline registered.
func (r *run) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// sync commits a marker transaction and waits until the pipeline's
// checkpoint is at or past it: everything committed before is in Redis.
func (e *env) sync(r *run) {
	e.t.Helper()
	e.exec("INSERT INTO _marker VALUES (1, 1) ON DUPLICATE KEY UPDATE n = n + 1")
	want, err := e.position().Version()
	if err != nil {
		e.t.Fatal(err)
	}
	waitFor(e.t, func() error {
		r.failIfStopped(e.t)
		cp, ok := e.checkpoint()
		if !ok {
			return errors.New("no checkpoint yet")
		}
		if cp.Version < want {
			return fmt.Errorf("checkpoint %s (version %d) is behind %d", cp.Pos, cp.Version, want)
		}
		return nil
	}, 60*time.Second)
}

// waitFor polls cond until it returns nil, failing the test with cond's
// last error after timeout.
func waitFor(t *testing.T, cond func() error, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logBuffer collects the pipeline's log lines.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *logBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// ---- the oracle ----

// mysqlRow is one row as MySQL's text protocol returns it.
type mysqlRow struct {
	cols    []string
	vals    map[string]*string // nil: NULL
	numeric map[string]bool
}

func (r mysqlRow) get(c string) *string { return r.vals[strings.ToLower(c)] }

// readRows reads every row of table, keyed by its id column.
func readRows(t *testing.T, db *sql.DB, table string) map[string]mysqlRow {
	t.Helper()
	rows, err := db.Query("SELECT * FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	numeric := map[string]bool{}
	for _, ct := range types {
		cols = append(cols, ct.Name())
		switch strings.TrimPrefix(ct.DatabaseTypeName(), "UNSIGNED ") {
		case "TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT", "DECIMAL", "FLOAT", "DOUBLE", "YEAR":
			numeric[strings.ToLower(ct.Name())] = true
		}
	}
	out := map[string]mysqlRow{}
	raw := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		r := mysqlRow{cols: cols, vals: map[string]*string{}, numeric: numeric}
		for i, c := range cols {
			if raw[i] != nil {
				s := string(raw[i])
				r.vals[strings.ToLower(c)] = &s
			} else {
				r.vals[strings.ToLower(c)] = nil
			}
		}
		out[*r.get("id")] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// jsonOf renders the row's columns cols as the rewrite rule must: numbers
// and DECIMALs unquoted, text quoted, NULL as null, in the given order.
func (r mysqlRow) jsonOf(cols []string) string {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, c := range cols {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(jsonString(c))
		b.WriteByte(':')
		switch v := r.get(c); {
		case v == nil:
			b.WriteString("null")
		case r.numeric[strings.ToLower(c)]:
			b.WriteString(*v)
		default:
			b.Write(jsonString(*v))
		}
	}
	b.WriteByte('}')
	return b.String()
}

func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// hashOf is the rewrite hash of the row: non-NULL columns as text.
func (r mysqlRow) hashOf(cols []string) map[string]string {
	h := map[string]string{}
	for _, c := range cols {
		if v := r.get(c); v != nil {
			h[c] = *v
		}
	}
	return h
}

var colRef = regexp.MustCompile(`\{(\w+)\}`)

// render fills a simple template ("p:{col}:x") from the row; ok is false
// when a referenced column is NULL.
func (r mysqlRow) render(tmpl string) (string, bool) {
	ok := true
	out := colRef.ReplaceAllStringFunc(tmpl, func(m string) string {
		v := r.get(m[1 : len(m)-1])
		if v == nil {
			ok = false
			return ""
		}
		return *v
	})
	return out, ok
}

// keyPattern is the SCAN pattern of every key a template can name.
func keyPattern(tmpl string) string {
	return tmpl[:strings.IndexByte(tmpl, '{')] + "*"
}

// expectation is what Redis must hold for a set of stateful rules.
type expectation struct {
	strings map[string]string            // rewrite json, mirror
	hashes  map[string]map[string]string // rewrite hash
	sets    map[string][]string          // member
	// alt lists other acceptable values for a string or hash key (see
	// TestDDLAddColumn: a row's layout may be one of two).
	alt      map[string][]string
	altHash  map[string][]map[string]string
	patterns []string // every key of these rules matches one of these
}

func newExpectation() *expectation {
	return &expectation{strings: map[string]string{}, hashes: map[string]map[string]string{},
		sets: map[string][]string{}, alt: map[string][]string{}, altHash: map[string][]map[string]string{}}
}

// expect derives Redis' state for the stateful rules from MySQL's rows.
// Invalidate rules keep no state and are skipped.
func expect(rules []sink.RuleConfig, rows map[string]mysqlRow) *expectation {
	x := newExpectation()
	for _, rc := range rules {
		if rc.Kind == sink.KindInvalidate {
			continue
		}
		x.patterns = append(x.patterns, keyPattern(rc.Key))
		for _, row := range rows {
			key, ok := row.render(rc.Key)
			if !ok {
				continue
			}
			switch {
			case rc.Kind == sink.KindRewrite && rc.Format == "hash":
				cols := rc.Columns
				if len(cols) == 0 {
					cols = row.cols
				}
				x.hashes[key] = row.hashOf(cols)
			case rc.Kind == sink.KindRewrite:
				cols := rc.Columns
				if len(cols) == 0 {
					cols = row.cols
				}
				x.strings[key] = row.jsonOf(cols)
			case rc.Kind == sink.KindMirror:
				if v := row.get(rc.Column); v != nil {
					x.strings[key] = *v
				}
			case rc.Kind == sink.KindMember:
				if rc.When != nil {
					v := row.get(rc.When.Column)
					if v == nil || !(*v == rc.When.Equals || slices.Contains(rc.When.In, *v)) {
						continue
					}
				}
				m, ok := row.render(rc.Member)
				if ok {
					x.sets[key] = append(x.sets[key], m)
				}
			}
		}
	}
	return x
}

// check compares Redis with the expectation: every expected key holds its
// value, and no other key of these rules exists.
func (x *expectation) check(ctx context.Context, rdb redis.UniversalClient) error {
	var problems []string
	add := func(format string, args ...any) {
		if len(problems) < 10 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	seen := map[string]bool{}
	for _, pat := range x.patterns {
		keys, err := scanKeys(ctx, rdb, pat)
		if err != nil {
			return err
		}
		for _, k := range keys {
			seen[k] = true
		}
	}
	for k, want := range x.strings {
		got, err := rdb.Get(ctx, k).Result()
		if err != nil {
			add("%s: %v, want %q", k, err, want)
		} else if got != want && !slices.Contains(x.alt[k], got) {
			add("%s = %s\n\t\twant %s %s", k, got, want, strings.Join(x.alt[k], " or "))
		}
		delete(seen, k)
	}
	for k, want := range x.hashes {
		got, err := rdb.HGetAll(ctx, k).Result()
		ok := err == nil && mapsEqual(got, want)
		for _, alt := range x.altHash[k] {
			ok = ok || (err == nil && mapsEqual(got, alt))
		}
		if !ok {
			add("HGETALL %s = %v (%v), want %v", k, got, err, want)
		}
		delete(seen, k)
	}
	for k, want := range x.sets {
		got, err := rdb.SMembers(ctx, k).Result()
		sort.Strings(got)
		sort.Strings(want)
		if err != nil || !slices.Equal(got, want) {
			add("SMEMBERS %s = %v (%v), want %v", k, got, err, want)
		}
		delete(seen, k)
	}
	for k := range seen {
		typ, _ := rdb.Type(ctx, k).Result()
		add("%s (a %s) exists but MySQL has no such row", k, typ)
	}
	if len(problems) > 0 {
		return fmt.Errorf("redis differs from mysql:\n\t%s", strings.Join(problems, "\n\t"))
	}
	return nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkConsistent fails the test unless Redis holds exactly what the
// stateful rules derive from table's current rows.
func (e *env) checkConsistent(rules []sink.RuleConfig, table string) {
	e.t.Helper()
	x := expect(rules, readRows(e.t, e.db, table))
	if err := x.check(context.Background(), e.rdb); err != nil {
		e.t.Fatal(err)
	}
}

// ---- a workload over the standard items table ----

// itemsTable has a latin1 text column and an ENUM: the binlog holds them as
// latin1 bytes and as a number, the snapshot reads them as UTF-8 text.
const itemsTable = `CREATE TABLE items (
	id INT PRIMARY KEY,
	cat INT NULL,
	name VARCHAR(64) CHARACTER SET latin1 NULL,
	price DECIMAL(10,2) NOT NULL,
	stock INT NULL,
	status ENUM('on_sale', 'promo', 'off', 'sold_out') NOT NULL,
	qty TINYINT NOT NULL DEFAULT 0,
	big BIGINT UNSIGNED NULL,
	ratio DOUBLE NULL
)`

// itemRules has one rule of every kind on items.
func (e *env) itemRules() []sink.RuleConfig {
	tbl := e.schema + ".items"
	return []sink.RuleConfig{
		{Table: tbl, Kind: sink.KindInvalidate, Keys: []string{e.p + "inv:{id}", e.p + "invcat:{cat}"}},
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "json:{id}"},
		{Table: tbl, Kind: sink.KindRewrite, Key: e.p + "hash:{id}", Format: "hash", Columns: []string{"id", "name", "price", "stock", "big"}},
		{Table: tbl, Kind: sink.KindMirror, Key: e.p + "stock:{id}", Column: "stock"},
		{Table: tbl, Kind: sink.KindMember, Key: e.p + "cat:{cat}", Member: "{id}", When: &sink.Condition{Column: "status", In: []string{"on_sale", "promo"}}},
	}
}

var statuses = []string{"on_sale", "promo", "off", "sold_out"}

// randomItemTxn returns the statements of one random transaction on
// items with ids 1..n.
func randomItemTxn(r *rand.Rand, n int) []string {
	var qs []string
	for range 1 + r.IntN(3) {
		id := 1 + r.IntN(n)
		switch r.IntN(10) {
		case 0:
			qs = append(qs, fmt.Sprintf("DELETE FROM items WHERE id = %d", id))
		case 1:
			qs = append(qs, fmt.Sprintf("UPDATE items SET stock = stock - 1 WHERE id BETWEEN %d AND %d", id, id+5))
		case 2:
			qs = append(qs, fmt.Sprintf("UPDATE items SET cat = %d, status = '%s' WHERE id = %d", r.IntN(5), statuses[r.IntN(4)], id))
		default:
			name := fmt.Sprintf("'item %d \"%d\"'", id, r.IntN(1000))
			if r.IntN(5) == 0 {
				name = "NULL"
			}
			stock := fmt.Sprint(r.IntN(100))
			if r.IntN(8) == 0 {
				stock = "NULL"
			}
			qs = append(qs, fmt.Sprintf(`INSERT INTO items (id, cat, name, price, stock, status, qty, big, ratio)
				VALUES (%d, %d, %s, %d.%02d, %s, '%s', %d, %d, %d.5)
				ON DUPLICATE KEY UPDATE cat = VALUES(cat), name = VALUES(name), price = VALUES(price),
				stock = VALUES(stock), status = VALUES(status), qty = VALUES(qty), big = VALUES(big), ratio = VALUES(ratio)`,
				id, r.IntN(5), name, r.IntN(1000), r.IntN(100), stock, statuses[r.IntN(4)], r.IntN(256)-128,
				r.Uint64()>>r.IntN(64), r.IntN(100)))
		}
	}
	return qs
}

// workload runs random transactions on items until stop is called; errors
// (a server being restarted) are retried. stop returns the number of
// committed transactions.
type workload struct {
	stopc chan struct{}
	done  chan struct{}
	txns  atomic.Int64
	fails atomic.Int64
}

func (e *env) startWorkload(seed uint64, n int) *workload {
	w := &workload{stopc: make(chan struct{}), done: make(chan struct{})}
	r := rand.New(rand.NewPCG(seed, 1))
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stopc:
				return
			default:
			}
			if err := runTx(e.db, randomItemTxn(r, n)...); err != nil {
				w.fails.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			w.txns.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	e.t.Cleanup(func() { w.stop() })
	return w
}

func (w *workload) stop() int64 {
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
	<-w.done
	return w.txns.Load()
}

// waitTxns waits until the workload committed n more transactions.
func (w *workload) waitTxns(t *testing.T, n int64) {
	t.Helper()
	target := w.txns.Load() + n
	waitFor(t, func() error {
		if got := w.txns.Load(); got < target {
			return fmt.Errorf("workload committed %d transactions, waiting for %d (%d failed)", got, target, w.fails.Load())
		}
		return nil
	}, 60*time.Second)
}
