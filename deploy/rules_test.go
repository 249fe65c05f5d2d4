package deploy

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"go.yaml.in/yaml/v3"
)

// Files, relative to this package's directory.
const (
	alertsFile     = "prometheus/alerts.yml"
	alertTestsFile = "prometheus/alerts_test.yml"
	promConfigFile = "prometheus/prometheus.yml"
	dashboardFile  = "grafana/cachesync.json"
	composeFile    = "../docker-compose.yml"
)

// scrapeJob is the job name the rules select on (up{job="cachesync"}).
const scrapeJob = "cachesync"

// promtool runs promtool (Debian package prometheus) with args in dir and
// fails the test with its output if it exits non-zero. A missing promtool
// fails the test: it is never skipped.
func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin, err := testenv.LookBinary("promtool", "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPromtoolCheck: the rules and the Prometheus configuration of
// docker-compose.yml (which loads the rules) are valid.
func TestPromtoolCheck(t *testing.T) {
	promtool(t, ".", "check", "rules", alertsFile)
	promtool(t, ".", "check", "config", promConfigFile)
}

// TestPromtoolTestRules runs the rules' unit tests (alerts_test.yml).
func TestPromtoolTestRules(t *testing.T) {
	out := promtool(t, "prometheus", "test", "rules", "alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: no SUCCESS in\n%s", out)
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func alertRules(t *testing.T) []rule {
	t.Helper()
	var f ruleFile
	readYAML(t, alertsFile, &f)
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s: no rules", alertsFile)
	}
	return rules
}

// TestAlertsDocumented: every alert has a severity (critical or warning), a
// summary and a description that says what to do, and is explained in the
// README's "Alerts and dashboards" section.
func TestAlertsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "\n## Alerts and dashboards\n")
	section, _, _ = strings.Cut(section, "\n## ")
	for _, r := range alertRules(t) {
		if r.Alert == "" {
			t.Errorf("recording rule %q in %s: the file holds alerts only", r.Record, alertsFile)
			continue
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 {
			t.Errorf("%s: want a summary and a description of what to do", r.Alert)
		}
		if !strings.Contains(section, "`"+r.Alert+"`") {
			t.Errorf("%s is not explained in README.md, section \"Alerts and dashboards\"", r.Alert)
		}
	}
}

// TestAlertTestsCoverEveryAlert: alerts_test.yml has, for every alert, a
// case where it fires and one where it does not, and tests no alert that
// does not exist.
func TestAlertTestsCoverEveryAlert(t *testing.T) {
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, alertTestsFile, &tf)
	if !slices.Equal(tf.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("%s tests %v, want [alerts.yml]", alertTestsFile, tf.RuleFiles)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	names := map[string]bool{}
	for _, r := range alertRules(t) {
		names[r.Alert] = true
		if !fires[r.Alert] {
			t.Errorf("%s: no test case where it fires", r.Alert)
		}
		if !silent[r.Alert] {
			t.Errorf("%s: no test case where it stays silent", r.Alert)
		}
	}
	for n := range fires {
		if !names[n] {
			t.Errorf("%s tests alert %s, which %s does not define", alertTestsFile, n, alertsFile)
		}
	}
	for n := range silent {
		if !names[n] {
			t.Errorf("%s tests alert %s, which %s does not define", alertTestsFile, n, alertsFile)
		}
	}
}
