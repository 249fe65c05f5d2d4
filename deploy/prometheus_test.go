package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
	"go.yaml.in/yaml/v3"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}

// fastFor is the for: of every rule in the copy TestReadinessAlertFires
// loads, so that an alert fires within seconds.
const fastFor = "1s"

// TestReadinessAlertFires: a real Prometheus (Debian package) scrapes a
// real daemon every second and evaluates the shipped rules (with for:
// shortened) every second. While the daemon is ready, CachesyncNotReady is
// not active; when Redis stops it fires for the daemon's target, and once
// Redis is back (empty: the daemon snapshots again) it resolves.
func TestReadinessAlertFires(t *testing.T) {
	start := time.Now()
	bin := testenv.BuildCachesync(t)
	my := testenv.StartMariaDB(t)
	rs := testenv.StartRedis(t)
	db := my.DB(t, "opsart")
	if _, err := db.Exec(`CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL);
		INSERT INTO items VALUES (1, 'one'), (2, 'two')`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "cachesync.yaml")
	cfg := fmt.Sprintf(`mysql:
  addr: %s
  user: root
  server_id: %d
redis:
  addr: %s
http:
  addr: 127.0.0.1:0
log:
  level: info
  format: json
sink:
  rules:
    - table: opsart.items
      kind: rewrite
      key: "item:{id}"
      format: json
      columns: [id, name]
`, my.Addr(), 1000+rand.N(1<<30), rs.Addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &testenv.Child{Bin: bin, Config: cfgPath, Dir: dir}
	t.Cleanup(d.KillCurrent)
	run := d.Start(t)

	var target string // host:port of the daemon's /metrics
	waitFor(t, 30*time.Second, "the daemon ready on its /metrics", func() error {
		if run.Exited() {
			t.Fatalf("daemon exited: %v%s", run.Err(), run.Tail())
		}
		var err error
		target, err = metricsTarget(run)
		if err != nil {
			return err
		}
		if v, err := scrapeValue(target, "cachesync_ready"); err != nil || v != "1" {
			return fmt.Errorf("cachesync_ready %q (%v)", v, err)
		}
		return nil
	})
	t.Logf("daemon ready, /metrics on %s, %v after the start", target, time.Since(start).Round(time.Millisecond))

	pdir := t.TempDir()
	writeFastRules(t, filepath.Join(pdir, "alerts.yml"))
	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: %s
    static_configs:
      - targets: [%q]
`, scrapeJob, target)
	if err := os.WriteFile(filepath.Join(pdir, "prometheus.yml"), []byte(promCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := testenv.StartPrometheus(t, pdir)
	api := promAPI{base: prom.URL()}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(prom.Log(), 20))
		}
	})

	waitFor(t, 20*time.Second, "Prometheus scraping the daemon as ready, with the rules loaded", func() error {
		v, err := api.query(fmt.Sprintf(`cachesync_ready{job=%q,instance=%q}`, scrapeJob, target))
		if err != nil || v != "1" {
			return fmt.Errorf("cachesync_ready %q (%v)", v, err)
		}
		return api.ruleLoaded("CachesyncNotReady")
	})
	// Ready for a few evaluations: the alert is not even pending.
	time.Sleep(3 * time.Second)
	if a, err := api.alert("CachesyncNotReady"); err != nil || a != nil {
		t.Fatalf("CachesyncNotReady while the daemon is ready: %+v (%v)", a, err)
	}

	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitFor(t, 30*time.Second, "CachesyncNotReady firing", func() error {
		a, err := api.alert("CachesyncNotReady")
		if err != nil {
			return err
		}
		if a == nil || a.State != "firing" {
			return fmt.Errorf("alert: %+v", a)
		}
		if a.Labels["instance"] != target || a.Labels["job"] != scrapeJob || a.Labels["severity"] != "critical" {
			t.Fatalf("CachesyncNotReady labels %v, want instance %s, job %s, severity critical", a.Labels, target, scrapeJob)
		}
		if !strings.Contains(a.Annotations["description"], "GET /readyz") {
			t.Errorf("description %q does not say what to do", a.Annotations["description"])
		}
		return nil
	})
	t.Logf("CachesyncNotReady firing %v after Redis stopped", time.Since(stopped).Round(time.Millisecond))
	if run.Exited() {
		t.Fatalf("daemon exited while Redis was down: %v%s", run.Err(), run.Tail())
	}
	if a, err := api.alert("CachesyncDown"); err != nil || a != nil {
		t.Errorf("CachesyncDown active while the daemon runs: %+v (%v)", a, err)
	}

	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitFor(t, 30*time.Second, "CachesyncNotReady resolved once Redis is back", func() error {
		a, err := api.alert("CachesyncNotReady")
		if err != nil || a != nil {
			return fmt.Errorf("alert: %+v (%v)", a, err)
		}
		return nil
	})
	t.Logf("resolved %v after Redis came back; whole test %v", time.Since(back).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	run.Term(t, time.Minute)
}

// writeFastRules writes the shipped alert rules to path with every for:
// set to fastFor.
func writeFastRules(t *testing.T, path string) {
	t.Helper()
	var doc map[string]any
	readYAML(t, alertsFile, &doc)
	n := 0
	for _, g := range doc["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r.(map[string]any)["for"] = fastFor
			n++
		}
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no rules in %s", alertsFile)
	}
}

// metricsTarget returns the host:port where the run serves /metrics: the
// first address the daemon logged as listening on ("http listening", or
// another listener such as an admin one) that answers GET /metrics with
// cachesync's metrics. The daemon logs each listener's bound address.
func metricsTarget(run *testenv.ChildRun) (string, error) {
	f, err := os.Open(run.Log)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var tried []string
	for sc.Scan() {
		var line struct{ Message, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Addr == "" || !strings.Contains(line.Message, "listening") {
			continue
		}
		tried = append(tried, line.Addr)
		if _, err := scrapeValue(line.Addr, "cachesync_ready"); err == nil {
			return line.Addr, nil
		}
	}
	return "", fmt.Errorf("no listener logged so far serves cachesync's /metrics (tried %v)", tried)
}

// scrapeValue reads the value of the unlabelled series name from
// http://addr/metrics.
func scrapeValue(addr, name string) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s in /metrics", name)
}

// promAPI reads Prometheus's HTTP API.
type promAPI struct{ base string }

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

func (p promAPI) get(path string, data any) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("GET %s: %s %s", path, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// query returns the value of the instant query's only sample.
func (p promAPI) query(q string) (string, error) {
	var d struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(q), &d); err != nil {
		return "", err
	}
	if len(d.Result) != 1 {
		return "", fmt.Errorf("%s: %d samples, want 1", q, len(d.Result))
	}
	v, _ := d.Result[0].Value[1].(string)
	return v, nil
}

// alert returns the active (pending or firing) alert of that name, nil
// when there is none; more than one is an error.
func (p promAPI) alert(name string) (*promAlert, error) {
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := p.get("/api/v1/alerts", &d); err != nil {
		return nil, err
	}
	var found []promAlert
	for _, a := range d.Alerts {
		if a.Labels["alertname"] == name {
			found = append(found, a)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return &found[0], nil
	}
	return nil, fmt.Errorf("%d active %s alerts: %+v", len(found), name, found)
}

// ruleLoaded returns nil once the server has loaded the alert rule name.
func (p promAPI) ruleLoaded(name string) error {
	var d struct {
		Groups []struct {
			Rules []struct {
				Name string `json:"name"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules?type=alert", &d); err != nil {
		return err
	}
	for _, g := range d.Groups {
		for _, r := range g.Rules {
			if r.Name == name {
				return nil
			}
		}
	}
	return fmt.Errorf("rule %s not loaded", name)
}

// waitFor polls fn every 200ms until it returns nil, failing the test with
// its last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := testenv.WaitFor(ctx, 200*time.Millisecond, func(context.Context) error { return fn() }); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
