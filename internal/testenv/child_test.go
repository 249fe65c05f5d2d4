package testenv

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// recordTB records what CheckLogs reports instead of failing the test.
type recordTB struct {
	*testing.T
	errors []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recordTB) Error(args ...any) { r.errors = append(r.errors, fmt.Sprint(args...)) }

// TestChildLogs checks what CheckLogs, Grep and Tail read from run logs
// written by hand (no process runs).
func TestChildLogs(t *testing.T) {
	c := &Child{Dir: t.TempDir(), runs: 2}
	long := strings.Repeat("x", 200_000) // longer than bufio.Scanner's default
	logs := []string{
		`{"level":"info","message":"started"}
{"level":"warn","message":"slow"}
{"level":"warn","message":"retry","attempt":1,"long":"` + long + `"}
{"level":"error","message":"broken"}
`,
		`{"level":"warn","message":"slow"}
panic: boom
WARNING: DATA RACE
fatal error: concurrent map writes
{"level":"fatal","message":"gone"}
plain text
`,
	}
	for i, l := range logs {
		if err := os.WriteFile(c.logPath(i+1), []byte(l), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recordTB{T: t}
	warns := c.CheckLogs(rec)
	if want := map[string]int{"slow": 2, "retry": 1}; !maps.Equal(warns, want) {
		t.Errorf("warnings %v, want %v", warns, want)
	}
	var got []string
	for _, e := range rec.errors {
		file, line, _ := strings.Cut(e, ": ")
		got = append(got, filepath.Base(file)+" "+line)
	}
	want := []string{
		`run-001.log {"level":"error","message":"broken"}`,
		`run-002.log panic: boom`,
		`run-002.log WARNING: DATA RACE`,
		`run-002.log fatal error: concurrent map writes`,
		`run-002.log {"level":"fatal","message":"gone"}`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("CheckLogs reported\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	r := &ChildRun{N: 1, Log: c.logPath(1)}
	if line := r.Grep(`"retry"`); !strings.HasSuffix(line, long+`"}`) {
		t.Errorf("Grep of a 200 kB line returned %d bytes", len(line))
	}
	if !r.LogHas(`"broken"`) || r.LogHas("nowhere") {
		t.Error("LogHas does not tell what the log has")
	}

	var b strings.Builder
	for i := range 40 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	r.Log = filepath.Join(c.Dir, "tail.log")
	if err := os.WriteFile(r.Log, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tail := r.Tail()
	if !strings.HasPrefix(tail, "\n--- last lines of "+r.Log+" ---\nline 10\n") || !strings.HasSuffix(tail, "\nline 39") || strings.Count(tail, "\n") != 31 {
		t.Errorf("Tail:%s", tail)
	}
}

func TestChildEnv(t *testing.T) {
	t.Setenv("CACHESYNC_TESTENV_X", "1")
	t.Setenv("TESTENV_Y", "2")
	env := ChildEnv()
	if slices.Contains(env, "CACHESYNC_TESTENV_X=1") || !slices.Contains(env, "TESTENV_Y=2") {
		t.Errorf("ChildEnv keeps CACHESYNC_ variables or drops others")
	}
}
