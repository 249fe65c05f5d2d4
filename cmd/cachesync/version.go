package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags "-X main.buildTime=… -X main.buildCommit=…" by a build
// that knows them; the commit is only used when the binary carries no VCS
// information (go build -buildvcs=false, or a tree without .git, as in a
// Docker build context).
var (
	buildTime   string
	buildCommit string
)

var versionCommand = &command{
	name:    "version",
	summary: "print the version, commit, build time and Go version",
	help: `Prints the module version, the VCS commit the binary was built from ("dirty"
when the tree had uncommitted changes) and its time, the build time when the
build set it (-ldflags "-X main.buildTime=..."), and the Go version and
platform. Also: cachesync --version.`,
	setup: func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		return noArgs(c, o, func() int {
			info, _ := debug.ReadBuildInfo()
			writeVersion(o.out, info)
			return 0
		})
	},
}

// writeVersion prints what info (nil: none) and the -ldflags variables say.
func writeVersion(w io.Writer, info *debug.BuildInfo) {
	module, version := "github.com/cachesync/cachesync", "unknown"
	settings := map[string]string{}
	if info != nil {
		if info.Main.Path != "" {
			module = info.Main.Path
		}
		if info.Main.Version != "" {
			version = info.Main.Version
		}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
	}
	commit := settings["vcs.revision"]
	switch {
	case commit == "" && buildCommit != "":
		commit = buildCommit
	case commit == "":
		commit = "unknown (built without VCS information)"
	case settings["vcs.modified"] == "true":
		commit += " (dirty)"
	}
	fmt.Fprintf(w, "cachesync %s\n", version)
	fmt.Fprintf(w, "  module:      %s\n", module)
	fmt.Fprintf(w, "  commit:      %s\n", commit)
	if t := settings["vcs.time"]; t != "" {
		fmt.Fprintf(w, "  commit time: %s\n", t)
	}
	if buildTime != "" {
		fmt.Fprintf(w, "  built:       %s\n", buildTime)
	}
	goVersion := runtime.Version()
	if info != nil && info.GoVersion != "" {
		goVersion = info.GoVersion
	}
	fmt.Fprintf(w, "  go:          %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
}
