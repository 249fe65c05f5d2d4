package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestHealthCachedResults: checks run in the background every interval,
// not per request; a result carries its age; a check past its timeout
// fails with "timed out after", whether it honours its context or hangs;
// one that answers late fails too; Stop names a check that will not end.
func TestHealthCachedResults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := NewHealth(time.Second, 2*time.Second)
		var runs atomic.Int32
		h.Register("ok", func(context.Context) error { runs.Add(1); return nil })
		h.Register("down", func(context.Context) error { return errors.New("connection refused") })
		h.Register("honours-ctx", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
		release := make(chan struct{})
		h.Register("hung", func(context.Context) error { <-release; return nil })
		h.Register("late", func(context.Context) error { time.Sleep(3 * time.Second); return nil })
		h.Role("cdc", func() string { return "leader" })

		if r := h.Results()["ok"]; r.OK || r.Error != "not checked yet" {
			t.Errorf("before Start: %+v, want not checked yet", r)
		}
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		res := h.Results()
		if r := res["ok"]; !r.OK || r.AgeSeconds != 0 {
			t.Errorf("ok at start: %+v", r)
		}
		if r := res["down"]; r.OK || r.Error != "connection refused" {
			t.Errorf("down: %+v", r)
		}
		if r := res["hung"]; r.OK || r.Error != "not checked yet" {
			t.Errorf("hung within its timeout: %+v, want not checked yet", r)
		}
		time.Sleep(500 * time.Millisecond)
		if r := h.Results()["ok"]; r.AgeSeconds != 0.5 {
			t.Errorf("ok after 500ms: age %v, want 0.5", r.AgeSeconds)
		}
		// Requests do not run checks.
		before := runs.Load()
		for range 100 {
			h.Ready()
		}
		if runs.Load() != before {
			t.Errorf("Ready ran the check %d times", runs.Load()-before)
		}

		time.Sleep(1600 * time.Millisecond) // t = 2.1s
		synctest.Wait()
		failing := h.Ready()
		if got := failing["hung"]; got != "timed out after 2s" {
			t.Errorf("hung: %q, want timed out after 2s", got)
		}
		if got := failing["honours-ctx"]; !strings.HasPrefix(got, "timed out after 2s") {
			t.Errorf("honours-ctx: %q, want timed out after 2s", got)
		}
		if _, ok := failing["ok"]; ok || runs.Load() != 3 {
			t.Errorf("ok: failing %v, %d runs by t=2.1s, want 3 (t=0,1,2)", failing, runs.Load())
		}
		time.Sleep(time.Second) // t = 3.1s: late answered at 3s
		synctest.Wait()
		if got := h.Ready()["late"]; got != "timed out after 2s (answered after 3s)" {
			t.Errorf("late: %q", got)
		}
		if r := h.Results()["hung"]; r.AgeSeconds != 3.1 {
			t.Errorf("hung: age %v, want 3.1 (since it started)", r.AgeSeconds)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := h.Stop(ctx); err == nil || !strings.Contains(err.Error(), "hung") {
			t.Errorf("Stop with a hung check: %v, want an error naming it", err)
		}
		close(release)
		time.Sleep(3 * time.Second) // the last run of late ends (the clock stops when this function returns)
		synctest.Wait()
	})
}

// TestReadyzHungCheck: with one check blocked for good (ignoring its
// context), 20 concurrent /readyz on the admin listener all answer 503
// naming it, while it is still blocked. Before, /readyz ran the checks
// under a mutex: every probe waited for the hung one.
func TestReadyzHungCheck(t *testing.T) {
	adm := testAdmin(func(c *AdminConfig) { c.ReadyzInterval, c.ReadyzTimeout = 50*time.Millisecond, 200*time.Millisecond })
	h := NewHealth(adm.ReadyzInterval, adm.ReadyzTimeout)
	release := make(chan struct{})
	h.Register("hung", func(context.Context) error { <-release; return nil })
	h.Register("redis", func(context.Context) error { return nil })
	h.Role("cdc", func() string { return "leader" })
	s := startServer(t, testPublic(nil), adm, h)
	t.Cleanup(func() { close(release) }) // before the stops (cleanups run last first)

	url := "http://" + s.AdminAddr().String() + "/readyz"
	// A client timeout only so that a hung /readyz fails the test instead
	// of hanging it; nothing here measures speed.
	c := &http.Client{Timeout: 20 * time.Second}
	get := func() (int, readyz, error) {
		resp, err := c.Get(url)
		if err != nil {
			return 0, readyz{}, err
		}
		defer resp.Body.Close()
		var body readyz
		err = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body, err
	}
	for {
		code, body, err := get()
		if err != nil {
			t.Fatalf("/readyz while a check hangs: %v", err)
		}
		if code == http.StatusServiceUnavailable && body.Failing["hung"] == "timed out after 200ms" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			code, body, err := get()
			switch {
			case err != nil:
				t.Errorf("probe %d: %v", i, err)
			case code != http.StatusServiceUnavailable || body.Ready || body.Failing["hung"] != "timed out after 200ms":
				t.Errorf("probe %d: %d %+v, want 503 naming hung", i, code, body)
			case len(body.Failing) != 1 || !body.Checks["redis"].OK || body.Roles["cdc"] != "leader":
				t.Errorf("probe %d: %+v, want only hung failing, redis ok, the cdc role", i, body)
			}
		})
	}
	wg.Wait()
	select {
	case <-release:
		t.Fatal("the check was released before the probes answered")
	default:
	}
}

// readyz is /readyz's answer.
type readyz struct {
	Ready   bool              `json:"ready"`
	Failing map[string]string `json:"failing"`
	Roles   map[string]string `json:"roles"`
	Checks  map[string]Result `json:"checks"`
}

// TestReadyzShape: the JSON keeps its fields; a ready daemon answers 200.
func TestReadyzShape(t *testing.T) {
	adm := testAdmin(func(c *AdminConfig) { c.ReadyzInterval = 20 * time.Millisecond })
	h := NewHealth(adm.ReadyzInterval, adm.ReadyzTimeout)
	h.Register("redis", func(context.Context) error { return nil })
	h.Role("cdc", func() string { return "standby" })
	s := startServer(t, testPublic(nil), adm, h)
	for {
		resp, err := http.Get("http://" + s.AdminAddr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			time.Sleep(10 * time.Millisecond) // the first run has not finished
			continue
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if string(raw["ready"]) != "true" || string(raw["failing"]) != "{}" || string(raw["roles"]) != `{"cdc":"standby"}` ||
			!strings.HasPrefix(string(raw["checks"]), `{"redis":{"ok":true,"age_seconds":`) {
			t.Errorf("/readyz: %s", b)
		}
		return
	}
}
