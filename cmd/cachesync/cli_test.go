package main

// Tests of the command line itself: help, flags per command, exit codes and
// version. They run the command line in process and reach no server (a
// missing configuration file stops every command before it connects).

import (
	"bytes"
	"flag"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

// cliRun runs the command line in process.
func cliRun(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &stdio{out: &out, err: &errb})
	return code, out.String(), errb.String()
}

// flagsOf lists the flags command c defines.
func flagsOf(c *command) []string {
	fs, _ := newFlagSet(c, &stdio{out: &bytes.Buffer{}, err: &bytes.Buffer{}})
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

func TestTopLevelHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}} {
		code, out, errOut := cliRun(args...)
		if code != 0 || errOut != "" {
			t.Errorf("cachesync %s: exit %d, stderr %q; want 0 and nothing", strings.Join(args, " "), code, errOut)
		}
		for _, c := range commands() {
			if !strings.Contains(out, "\n  "+c.name+" ") || !strings.Contains(out, c.summary) {
				t.Errorf("cachesync %s: command %q and its summary are missing:\n%s", strings.Join(args, " "), c.name, out)
			}
		}
		if strings.Contains(out, "-config") && !strings.Contains(out, "cachesync [-config FILE]") || strings.Contains(out, "-item") {
			t.Errorf("cachesync %s lists flags of commands:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestCommandHelp: each command's -h (and help COMMAND) prints its own
// synopsis and flags, and no flag of another command.
func TestCommandHelp(t *testing.T) {
	all := map[string]bool{}
	for _, c := range commands() {
		for _, f := range flagsOf(c) {
			all[f] = true
		}
	}
	if len(all) < 6 {
		t.Fatalf("flags of all commands: %v, want config, table, item, rounds, force, resync at least", all)
	}
	for _, c := range commands() {
		own := flagsOf(c)
		for _, args := range [][]string{
			append(strings.Fields(c.name), "-h"),
			append([]string{"help"}, strings.Fields(c.name)...),
		} {
			code, out, errOut := cliRun(args...)
			if code != 0 || errOut != "" {
				t.Errorf("cachesync %s: exit %d, stderr %q; want 0 and nothing", strings.Join(args, " "), code, errOut)
				continue
			}
			if !strings.HasPrefix(out, "Usage: cachesync "+c.name) {
				t.Errorf("cachesync %s: want its usage first, got:\n%s", strings.Join(args, " "), out)
			}
			for f := range all {
				has := strings.Contains(out, "\n  -"+f+" ") || strings.Contains(out, "\n  -"+f+"\n")
				if want := slices.Contains(own, f); has != want {
					t.Errorf("cachesync %s: flag -%s listed %v, want %v:\n%s", strings.Join(args, " "), f, has, want, out)
				}
			}
		}
	}
	code, out, _ := cliRun("position", "-h")
	if code != 0 || !strings.Contains(out, "  show ") || !strings.Contains(out, "  set ") {
		t.Errorf("cachesync position -h: exit %d, want 0 and its subcommands:\n%s", code, out)
	}
}

// TestCommandLineErrors: unknown commands and flags, and bad arguments,
// exit 2 with the message and a usage on stderr; a missing configuration
// file exits 2 naming the command that read it, so each of these command
// lines reached the right command with its flags accepted.
func TestCommandLineErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	for _, tc := range []struct {
		args []string
		want []string // in stderr
	}{
		{[]string{"bogus"}, []string{`unknown command "bogus"`, "Commands:"}},
		{[]string{"bogus", "-config", missing}, []string{`unknown command "bogus"`}},
		{[]string{"help", "bogus"}, []string{`unknown command "bogus"`}},
		{[]string{"position"}, []string{"want a subcommand", "show", "set"}},
		{[]string{"position", "bogus"}, []string{`not "bogus"`}},
		{[]string{"run", "-item", "1"}, []string{"flag provided but not defined: -item", "Usage: cachesync run [-config FILE]\n"}},
		{[]string{"check", "-table", "a.b"}, []string{"flag provided but not defined: -table", "Usage: cachesync check "}},
		{[]string{"validate", "extra"}, []string{`unexpected argument "extra"`}},
		{[]string{"version", "-config", missing}, []string{"flag provided but not defined: -config"}},
		{[]string{"snapshot", "-config", missing}, []string{"-table schema.table is required"}},
		{[]string{"resync", "-config", missing}, []string{"-item: want item ids"}},
		{[]string{"check", "-item", "0"}, []string{"-item: want item ids"}},
		{[]string{"position", "set", "-config", missing}, []string{"want one position"}},
		{[]string{"position", "set", "-resync", "f.000001:4"}, []string{"-resync takes no position"}},
		{[]string{"position", "set", "f.000001:4", "f.000001:8"}, []string{"want one position"}},
		// These reach their command: it fails to read the configuration.
		{[]string{"-config", missing}, []string{"cachesync run: config: open " + missing}},
		{[]string{"run", "-config", missing}, []string{"cachesync run: config: open"}},
		{[]string{"validate", "--config", missing}, []string{"cachesync validate: config: open"}},
		{[]string{"snapshot", "-config", missing, "-table", "a.b"}, []string{"cachesync snapshot: config: open"}},
		{[]string{"check", "-config", missing, "-item", "1,2", "-rounds", "1"}, []string{"cachesync check: config: open"}},
		{[]string{"resync", "-config", missing, "-item", "3"}, []string{"cachesync resync: config: open"}},
		{[]string{"position", "show", "-config", missing}, []string{"cachesync position show: config: open"}},
		{[]string{"position", "set", "f.000001:4", "-config", missing, "-force"}, []string{"cachesync position set: config: open"}},
		{[]string{"position", "set", "-config", missing, "-resync"}, []string{"cachesync position set: config: open"}},
	} {
		code, out, errOut := cliRun(tc.args...)
		if code != 2 {
			t.Errorf("cachesync %s: exit %d, want 2\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), code, out, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("cachesync %s: stderr lacks %q:\n%s", strings.Join(tc.args, " "), w, errOut)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errOut := cliRun(args...)
		if code != 0 || errOut != "" {
			t.Errorf("cachesync %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
		}
		for _, w := range []string{"cachesync ", "module:", "commit:", "go:          " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH} {
			if !strings.Contains(out, w) {
				t.Errorf("cachesync %s lacks %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
	}
}

func TestWriteVersion(t *testing.T) {
	defer func(t, c string) { buildTime, buildCommit = t, c }(buildTime, buildCommit)
	info := func(settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/cachesync/cachesync", Version: "v1.2.3"}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	for _, tc := range []struct {
		name              string
		info              *debug.BuildInfo
		buildTime, commit string
		want, not         []string
	}{
		{"vcs", info("vcs.revision", "abc123", "vcs.time", "2026-11-29T10:00:00Z", "vcs.modified", "false"), "", "",
			[]string{"cachesync v1.2.3\n", "commit:      abc123\n", "commit time: 2026-11-29T10:00:00Z", "go:          go1.99.1 "}, []string{"dirty", "built:"}},
		{"dirty", info("vcs.revision", "abc123", "vcs.modified", "true"), "", "",
			[]string{"commit:      abc123 (dirty)\n"}, nil},
		{"ldflags", info(), "2026-11-30T01:02:03Z", "def456",
			[]string{"commit:      def456\n", "built:       2026-11-30T01:02:03Z"}, nil},
		{"vcs wins over ldflags", info("vcs.revision", "abc123"), "", "def456",
			[]string{"commit:      abc123\n"}, []string{"def456"}},
		{"nothing", nil, "", "",
			[]string{"cachesync unknown\n", "commit:      unknown", "go:          " + runtime.Version()}, nil},
	} {
		buildTime, buildCommit = tc.buildTime, tc.commit
		var b bytes.Buffer
		writeVersion(&b, tc.info)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s: lacks %q:\n%s", tc.name, w, b.String())
			}
		}
		for _, w := range tc.not {
			if strings.Contains(b.String(), w) {
				t.Errorf("%s: has %q:\n%s", tc.name, w, b.String())
			}
		}
	}
}
