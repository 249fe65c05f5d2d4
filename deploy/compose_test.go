package deploy

import (
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestComposeProvisioning: docker-compose.yml runs Prometheus and Grafana
// on the files of this directory, and the pieces fit: every file it mounts
// exists, Prometheus scrapes the cachesync services on the port they
// listen on under the job name the rules select, Grafana's datasource is
// that Prometheus with the uid the dashboard uses, and the dashboard
// provider reads the directory the dashboard is mounted in.
func TestComposeProvisioning(t *testing.T) {
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	readYAML(t, composeFile, &compose)
	mounts := map[string]string{} // container path → repository path
	for name, s := range compose.Services {
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 || !strings.HasPrefix(parts[0], "./") {
				continue
			}
			src := filepath.Join("..", parts[0])
			if _, err := os.Stat(src); err != nil {
				t.Errorf("service %s mounts %s: %v", name, parts[0], err)
			}
			mounts[parts[1]] = src
		}
	}
	for _, want := range []string{"prometheus", "grafana"} {
		if _, ok := compose.Services[want]; !ok {
			t.Errorf("%s has no %s service", composeFile, want)
		}
	}
	if mounts["/etc/prometheus/prometheus.yml"] != filepath.Join("..", "deploy", promConfigFile) ||
		mounts["/etc/prometheus/alerts.yml"] != filepath.Join("..", "deploy", alertsFile) {
		t.Errorf("prometheus does not get %s and %s beside it in /etc/prometheus: mounts %v", promConfigFile, alertsFile, mounts)
	}

	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, promConfigFile, &prom)
	if !slices.Contains(prom.RuleFiles, "alerts.yml") {
		t.Errorf("%s does not load alerts.yml: rule_files %v", promConfigFile, prom.RuleFiles)
	}
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName == scrapeJob {
			for _, s := range sc.StaticConfigs {
				targets = append(targets, s.Targets...)
			}
		}
	}
	var daemons []string
	for name, s := range compose.Services {
		if _, ok := s.Environment["CACHESYNC_HA_ID"]; ok {
			daemons = append(daemons, name)
		}
	}
	if len(daemons) == 0 {
		t.Fatalf("%s: no cachesync service (one with CACHESYNC_HA_ID)", composeFile)
	}
	for _, d := range daemons {
		var ports []string // where the service listens: the API, and an admin listener if set
		for _, v := range []string{"CACHESYNC_HTTP_ADDR", "CACHESYNC_ADMIN_ADDR"} {
			if _, p, err := net.SplitHostPort(compose.Services[d].Environment[v]); err == nil {
				ports = append(ports, p)
			}
		}
		found := false
		for _, tg := range targets {
			host, port, _ := net.SplitHostPort(tg)
			if host == d {
				found = true
				if !slices.Contains(ports, port) {
					t.Errorf("%s scrapes %s, but the service listens on %v", promConfigFile, tg, ports)
				}
			}
		}
		if !found {
			t.Errorf("%s: job %q does not scrape service %s (targets %v)", promConfigFile, scrapeJob, d, targets)
		}
	}

	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].UID != "prometheus" || ds.Datasources[0].Type != "prometheus" {
		t.Fatalf("grafana datasources %+v, want one of type prometheus with uid prometheus (the dashboard's)", ds.Datasources)
	}
	if u, err := url.Parse(ds.Datasources[0].URL); err != nil || u.Hostname() != "prometheus" {
		t.Errorf("grafana datasource URL %q does not reach the prometheus service", ds.Datasources[0].URL)
	}
	if mounts["/etc/grafana/provisioning"] != filepath.Join("..", "deploy", "grafana", "provisioning") {
		t.Errorf("grafana does not get deploy/grafana/provisioning in /etc/grafana/provisioning: mounts %v", mounts)
	}
	var dp struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/cachesync.yml", &dp)
	if len(dp.Providers) != 1 {
		t.Fatalf("grafana dashboard providers: %+v, want one", dp.Providers)
	}
	dash := path.Join(dp.Providers[0].Options.Path, "cachesync.json")
	if mounts[dash] != filepath.Join("..", "deploy", dashboardFile) {
		t.Errorf("the dashboard provider reads %s, where %s is not mounted: mounts %v", dp.Providers[0].Options.Path, dashboardFile, mounts)
	}
}
