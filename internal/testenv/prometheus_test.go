package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPrometheus starts a Prometheus that scrapes a closed port every
// 200ms and waits until its API reports the target down (up 0): the server
// reads the configuration, scrapes and answers queries. Close stops it and
// may be called twice.
func TestPrometheus(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := `global: {scrape_interval: 200ms, scrape_timeout: 200ms, evaluation_interval: 200ms}
scrape_configs:
  - job_name: self
    static_configs: [{targets: ["127.0.0.1:1"]}]
`
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p := StartPrometheus(t, dir)
	t.Logf("Prometheus ready on %s in %v", p.Addr(), time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := WaitFor(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		resp, err := http.Get(p.URL() + "/api/v1/query?query=" + url.QueryEscape(`up{job="self"}`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return err
		}
		if len(r.Data.Result) != 1 || r.Data.Result[0].Value[1] != "0" {
			return fmt.Errorf("up{job=\"self\"}: %+v, want one sample 0", r.Data.Result)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	p.Close()
	if _, err := http.Get(p.URL() + "/-/ready"); err == nil {
		t.Error("Prometheus still answers after Close")
	}
}
