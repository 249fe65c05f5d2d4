package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// catalog is every series name the daemon can export (a histogram as its
// _bucket, _sum and _count series) with its label names.
type catalog map[string]map[string]bool

// synthetic are the series Prometheus itself adds for each target.
var synthetic = catalog{
	"up":                      {},
	"scrape_duration_seconds": {},
	"scrape_samples_scraped":  {},
}

// targetLabels are the labels Prometheus attaches to every scraped series.
var targetLabels = []string{"job", "instance"}

func (c catalog) add(name, typ string, labels []string) {
	set := func(n string, extra ...string) {
		if c[n] == nil {
			c[n] = map[string]bool{}
		}
		for _, l := range append(slices.Clone(labels), extra...) {
			c[n][l] = true
		}
	}
	switch typ {
	case "histogram":
		set(name+"_bucket", "le")
		set(name + "_sum")
		set(name + "_count")
	case "summary":
		set(name, "quantile")
		set(name + "_sum")
		set(name + "_count")
	default:
		set(name)
	}
}

// recorder is the daemon's Registerer with every collector it registers
// kept: a Vec has no series before its first observation, so /metrics does
// not show it, but its Describe names it and its labels.
type recorder struct {
	prometheus.Registerer
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

var (
	descName   = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

// describe returns the names and label names of c's metrics.
func describe(c prometheus.Collector) map[string][]string {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	out := map[string][]string{}
	for d := range ch {
		s := d.String()
		m := descName.FindStringSubmatch(s)
		if m == nil {
			panic("cannot read the name in " + s)
		}
		var labels []string
		if l := descLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
			for _, n := range strings.Split(l[1], ",") {
				labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(n, "c("), ")"))
			}
		}
		out[m[1]] = labels
	}
	return out
}

// collectorType tells histograms from summaries: their interfaces have
// the same methods, so a single one is told by what it writes.
func collectorType(c prometheus.Collector) string {
	switch c.(type) {
	case *prometheus.HistogramVec:
		return "histogram"
	case *prometheus.SummaryVec:
		return "summary"
	}
	if m, ok := c.(prometheus.Metric); ok {
		var pb dto.Metric
		if m.Write(&pb) == nil {
			switch {
			case pb.Histogram != nil:
				return "histogram"
			case pb.Summary != nil:
				return "summary"
			}
		}
	}
	return ""
}

// daemonCatalog builds the daemon as `cachesync run` does, from the
// shipped configs/cachesync.yaml (every component on: L1, goods, the flash
// sale with its drift check) with the addresses of private servers, starts
// and stops it, and returns every metric it registered.
func daemonCatalog(t *testing.T) catalog {
	t.Helper()
	my := testenv.StartMariaDB(t)
	rs := testenv.StartRedis(t)
	kafka := testenv.StartKafka(t, testenv.KafkaTopic("cachesync.orders", 8), testenv.KafkaTopic("cachesync.orders.dlq", 1))
	db := my.DB(t, "shop")
	for _, f := range []string{"../configs/demo.sql", "../seckill/schema.sql"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(b)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	env := map[string]string{
		"CACHESYNC_MYSQL_ADDR":    my.Addr(),
		"CACHESYNC_REDIS_ADDR":    rs.Addr(),
		"CACHESYNC_KAFKA_BROKERS": strings.Join(kafka.Brokers(), ","),
		"CACHESYNC_HTTP_ADDR":     "127.0.0.1:0",
		"CACHESYNC_ADMIN_TOKEN":   strings.Repeat("t", 40),
		"CACHESYNC_JWT_SECRET":    strings.Repeat("j", 40),
	}
	cfg, err := config.Load("../configs/cachesync.yaml", func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log.Level = "warn"
	rec := &recorder{}
	var reg *prometheus.Registry
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		daemon.Options(cfg),
		fx.Decorate(func(r prometheus.Registerer) prometheus.Registerer { rec.Registerer = r; return rec }),
		fx.Populate(&reg))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		t.Fatalf("daemon start: %v", err)
	}
	defer func() {
		if err := app.Stop(ctx); err != nil {
			t.Errorf("daemon stop: %v", err)
		}
	}()

	c := catalog{}
	for _, col := range rec.collectors {
		for name, labels := range describe(col) {
			c.add(name, collectorType(col), labels)
		}
	}
	// Collectors registered on the registry itself (Go runtime, process).
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		var labels []string
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName())
			}
		}
		typ := strings.ToLower(mf.GetType().String()) // "histogram", "summary", "counter", ...
		c.add(mf.GetName(), typ, labels)
	}
	for _, want := range []string{"cachesync_sink_errors_total", "cachesync_seckill_drift", "cachesync_ready", "go_goroutines"} {
		if c[want] == nil {
			t.Fatalf("the catalog lacks %s: the daemon's metrics were not all recorded", want)
		}
	}
	return c
}

// query is one PromQL expression and where it was found.
type query struct {
	where, expr string
	legend      string // Grafana legendFormat, "" for none
}

func alertQueries(t *testing.T) []query {
	var qs []query
	for _, r := range alertRules(t) {
		qs = append(qs, query{where: alertsFile + ": " + r.Alert, expr: r.Expr})
	}
	return qs
}

// dashboardQueries returns every target expression of every panel (rows'
// panels included) and the template variables' queries.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr         string `json:"expr"`
			LegendFormat string `json:"legendFormat"`
		} `json:"targets"`
		Panels     []json.RawMessage `json:"panels"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	}
	var d struct {
		UID        string            `json:"uid"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query struct {
					Query string `json:"query"`
				} `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" {
		t.Errorf("%s: no uid", dashboardFile)
	}
	var qs []query
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", dashboardFile, err)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", dashboardFile, p.Title)
			}
			if p.Datasource == nil || p.Datasource.UID != "prometheus" {
				t.Errorf("%s: panel %q does not use the provisioned datasource (uid prometheus)", dashboardFile, p.Title)
			}
			for _, tg := range p.Targets {
				qs = append(qs, query{where: fmt.Sprintf("%s: panel %q", dashboardFile, p.Title), expr: tg.Expr, legend: tg.LegendFormat})
			}
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templating.List {
		m := labelValues.FindStringSubmatch(v.Query.Query)
		if m == nil {
			t.Errorf("%s: variable %s: query %q, want label_values(selector, label)", dashboardFile, v.Name, v.Query.Query)
			continue
		}
		qs = append(qs, query{where: dashboardFile + ": variable " + v.Name, expr: fmt.Sprintf("sum by (%s) (%s)", m[2], m[1])})
	}
	return qs
}

var (
	quoted    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	selector  = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	grouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	ranges    = regexp.MustCompile(`\[[^\]]*\]`)
	ident     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	legendVar = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	keywords  = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)

// checkQuery reports every metric q names that c lacks, every label of a
// selector the metric does not have, and every grouping or legend label
// that none of q's metrics has. It returns the metric names it found.
func checkQuery(q query, c catalog) (names []string, problems []string) {
	labelsOf := map[string]bool{}
	for _, l := range targetLabels {
		labelsOf[l] = true
	}
	known := func(name string) map[string]bool {
		if l, ok := c[name]; ok {
			return l
		}
		return synthetic[name]
	}
	// Selectors with label matchers: check each label against the metric.
	for _, m := range selector.FindAllStringSubmatch(q.expr, -1) {
		name, body := m[1], m[2]
		if name == "" {
			problems = append(problems, fmt.Sprintf("selector without a metric name: %s", m[0]))
			continue
		}
		labels := known(name)
		for _, lm := range matcher.FindAllStringSubmatch(body, -1) {
			if l := lm[1]; labels != nil && !labels[l] && !slices.Contains(targetLabels, l) && l != "__name__" {
				problems = append(problems, fmt.Sprintf("%s has no label %q", name, l))
			}
		}
	}
	// Metric names: what is left once strings, selectors' bodies, ranges,
	// grouping clauses, functions and keywords are taken out.
	rest := quoted.ReplaceAllString(q.expr, `""`)
	rest = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(rest, " ")
	rest = ranges.ReplaceAllString(rest, " ")
	var groupLabels []string
	for _, g := range grouping.FindAllStringSubmatch(rest, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				groupLabels = append(groupLabels, l)
			}
		}
	}
	rest = grouping.ReplaceAllString(rest, " ")
	for _, loc := range ident.FindAllStringIndex(rest, -1) {
		id := rest[loc[0]:loc[1]]
		after := strings.TrimLeft(rest[loc[1]:], " \t\n")
		if strings.HasPrefix(after, "(") || slices.Contains(keywords, id) || strings.HasPrefix(id, "$") {
			continue // a function, an aggregation or a keyword
		}
		if loc[0] > 0 && (rest[loc[0]-1] >= '0' && rest[loc[0]-1] <= '9' || rest[loc[0]-1] == '.') {
			continue // the exponent or unit of a number (1e3)
		}
		labels := known(id)
		if labels == nil {
			problems = append(problems, fmt.Sprintf("metric %s is not exported by the daemon", id))
			continue
		}
		names = append(names, id)
		for l := range labels {
			labelsOf[l] = true
		}
	}
	if len(names) == 0 && len(problems) == 0 {
		problems = append(problems, "names no metric")
	}
	for _, l := range groupLabels {
		if !labelsOf[l] {
			problems = append(problems, fmt.Sprintf("groups by %q, which none of %v has", l, names))
		}
	}
	for _, m := range legendVar.FindAllStringSubmatch(q.legend, -1) {
		if !labelsOf[m[1]] {
			problems = append(problems, fmt.Sprintf("legend {{%s}}: none of %v has that label", m[1], names))
		}
	}
	return names, problems
}

// TestQueriesUseExportedMetrics: every metric and label that an alert rule
// or a dashboard query names is one the daemon registers, so that neither
// can drift from the code. The daemon is built from the shipped
// configuration with every component on and asked for its collectors (a
// labelled metric is not in /metrics before its first observation).
func TestQueriesUseExportedMetrics(t *testing.T) {
	c := daemonCatalog(t)
	used := map[string]bool{}
	for _, q := range append(alertQueries(t), dashboardQueries(t)...) {
		names, problems := checkQuery(q, c)
		for _, p := range problems {
			t.Errorf("%s: %s\n\t%s", q.where, p, q.expr)
		}
		for _, n := range names {
			used[n] = true
		}
	}
	t.Logf("%d metrics used by the alerts and the dashboard, of %d the daemon exports", len(used), len(c))
}

// TestCheckQuery: the checker itself finds a misspelt metric, a label the
// metric does not have, and a grouping or legend label nothing carries.
func TestCheckQuery(t *testing.T) {
	c := catalog{}
	c.add("cachesync_sink_errors_total", "", []string{"kind"})
	c.add("cachesync_sink_apply_latency_seconds", "histogram", nil)
	for _, tc := range []struct {
		expr, legend string
		problems     int
	}{
		{`sum by (kind) (rate(cachesync_sink_errors_total{job="cachesync",kind=~"a|b"}[5m])) > 0`, "{{kind}} {{instance}}", 0},
		{`histogram_quantile(0.99, sum by (le) (rate(cachesync_sink_apply_latency_seconds_bucket[$__rate_interval])))`, "p99", 0},
		{`up{job="cachesync"} == 0`, "", 0},
		{`rate(cachesync_sink_error_total[5m])`, "", 1},                          // misspelt
		{`cachesync_sink_errors_total{reason="x"}`, "", 1},                       // no such label
		{`sum by (lease) (cachesync_sink_errors_total)`, "", 1},                  // grouping label
		{`cachesync_sink_errors_total`, "{{lease}}", 1},                          // legend label
		{`histogram_quantile(0.5, cachesync_sink_apply_latency_seconds)`, "", 1}, // the histogram's bare name
		{`1 > 0`, "", 1}, // no metric
	} {
		_, problems := checkQuery(query{expr: tc.expr, legend: tc.legend}, c)
		if len(problems) != tc.problems {
			t.Errorf("%s (legend %q): problems %q, want %d", tc.expr, tc.legend, problems, tc.problems)
		}
	}
}
