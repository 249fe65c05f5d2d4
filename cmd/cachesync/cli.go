package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cachesync/cachesync/config"
)

// A command is one subcommand: its own flag set, usage and runner.
type command struct {
	name     string // "check", "position set"
	args     string // positional arguments in the synopsis ("FILE:POS|GTID")
	summary  string // one line, in the command list
	help     string // paragraphs after the synopsis
	internal bool   // not in the command list (help)
	// setup defines the command's flags on fs and returns what runs it
	// with the arguments left after the flags.
	setup func(c *command, fs *flag.FlagSet, o *stdio) func(args []string) int
}

// stdio is where a command writes: help and results to out, errors to err.
type stdio struct{ out, err io.Writer }

// commands lists the subcommands in the order of the help.
func commands() []*command {
	return []*command{
		runCommand, validateCommand, snapshotCommand, checkCommand, resyncCommand,
		positionShowCommand, positionSetCommand, tokenCommand, versionCommand, helpCommand,
	}
}

// groups are names that only prefix subcommands ("position").
func commandGroups() []string { return []string{"position"} }

// lookup finds the command args start with; rest is what follows its name.
func lookup(args []string) (c *command, rest []string) {
	for _, c := range commands() {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return c, args[len(words):]
		}
	}
	return nil, args
}

// run is the command line: cachesync [command] [flags] [args]. It returns
// the exit code: 0 ok, 1 failure, 2 bad command line or configuration.
func run(args []string, o *stdio) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		switch {
		case len(args) > 0 && isHelpFlag(args[0]):
			usage(o.out)
			return 0
		case len(args) > 0 && (args[0] == "-version" || args[0] == "--version"):
			return execute(versionCommand, args[1:], o)
		}
		return execute(runCommand, args, o) // cachesync [-config FILE]: run
	}
	c, rest := lookup(args)
	if c == nil {
		if slices.Contains(commandGroups(), args[0]) {
			if len(args) > 1 && isHelpFlag(args[1]) {
				groupUsage(o.out, args[0])
				return 0
			}
			fmt.Fprintf(o.err, "cachesync %s: want a subcommand", args[0])
			if len(args) > 1 {
				fmt.Fprintf(o.err, ", not %q", args[1])
			}
			fmt.Fprintln(o.err)
			groupUsage(o.err, args[0])
			return 2
		}
		fmt.Fprintf(o.err, "cachesync: unknown command %q\n\n", args[0])
		usage(o.err)
		return 2
	}
	return execute(c, rest, o)
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help" || s == "--h"
}

// execute parses c's flags from args, which may also follow its positional
// arguments ("position set FILE:POS -force"), and runs it. -h prints its
// usage to out (exit 0); a bad flag prints the error and the usage to err
// (exit 2).
func execute(c *command, args []string, o *stdio) int {
	fs, runFn := newFlagSet(c, o)
	var msgs bytes.Buffer
	fs.SetOutput(&msgs)
	fs.Usage = func() {}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				commandUsage(o.out, c, fs)
				return 0
			}
			fmt.Fprintf(o.err, "cachesync %s: %s\n", c.name, strings.TrimSpace(msgs.String()))
			shortUsage(o.err, c, fs)
			return 2
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// Parse stops at the first argument that is no flag, or after "--".
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return runFn(pos)
}

func newFlagSet(c *command, o *stdio) (*flag.FlagSet, func([]string) int) {
	fs := flag.NewFlagSet("cachesync "+c.name, flag.ContinueOnError)
	return fs, c.setup(c, fs, o)
}

// usageError reports a bad argument the way a bad flag is: the message and
// the command's usage on err, exit code 2.
func usageError(c *command, o *stdio, format string, a ...any) int {
	fmt.Fprintf(o.err, "cachesync %s: %s\n", c.name, fmt.Sprintf(format, a...))
	fs, _ := newFlagSet(c, o)
	shortUsage(o.err, c, fs)
	return 2
}

// noArgs wraps a runner that takes no positional arguments.
func noArgs(c *command, o *stdio, fn func() int) func([]string) int {
	return func(args []string) int {
		if len(args) > 0 {
			return usageError(c, o, "unexpected argument %q", args[0])
		}
		return fn()
	}
}

// configOnly is the setup of a command that takes -config and no
// arguments: it loads the file (exit 2 when it does not load) and runs fn.
func configOnly(fn func(c *command, o *stdio, cfg *config.Config) int) func(*command, *flag.FlagSet, *stdio) func([]string) int {
	return func(c *command, fs *flag.FlagSet, o *stdio) func([]string) int {
		path := configFlag(fs)
		return noArgs(c, o, func() int {
			cfg, ok := loadConfig(c, o, *path)
			if !ok {
				return 2
			}
			return fn(c, o, cfg)
		})
	}
}

// configFlag defines -config, which every command that reaches a server has.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "configs/cachesync.yaml", "the configuration `FILE`")
}

// loadConfig loads path; an error is printed (exit code 2 is the caller's).
func loadConfig(c *command, o *stdio, path string) (*config.Config, bool) {
	cfg, err := config.Load(path, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(o.err, "cachesync %s: %v\n", c.name, err)
		return nil, false
	}
	return cfg, true
}

// usage is the top-level help: the commands with one line each.
func usage(w io.Writer) {
	fmt.Fprint(w, `cachesync keeps Redis coherent with MySQL/MariaDB by tailing the binlog.

Usage:
  cachesync <command> [flags] [arguments]
  cachesync [-config FILE]    the same as cachesync run

Commands:
`)
	for _, c := range commands() {
		if !c.internal {
			fmt.Fprintf(w, "  %-15s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprint(w, `
'cachesync <command> -h' (or 'cachesync help <command>') prints a command's flags.
Exit codes: 0 success, 1 failure (check: drift found), 2 bad command line or configuration.
`)
}

// groupUsage lists the subcommands of group.
func groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: cachesync %s <command> [flags] [arguments]\n\nCommands:\n", group)
	for _, c := range commands() {
		if sub, ok := strings.CutPrefix(c.name, group+" "); ok {
			fmt.Fprintf(w, "  %-6s %s\n", sub, c.summary)
		}
	}
	fmt.Fprintf(w, "\n'cachesync %s <command> -h' prints a command's flags.\n", group)
}

// commandUsage prints c's synopsis, help and flags: its -h.
func commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", synopsis(c, fs), strings.TrimSpace(c.help))
	printFlags(w, fs)
}

// shortUsage follows a command line error: the synopsis and the flags.
func shortUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n", synopsis(c, fs))
	printFlags(w, fs)
	fmt.Fprintf(w, "'cachesync %s -h' says more.\n", c.name)
}

// synopsis is c's command line, built from its flags.
func synopsis(c *command, fs *flag.FlagSet) string {
	syn := []string{"cachesync " + c.name}
	fs.VisitAll(func(f *flag.Flag) {
		if name, _ := flag.UnquoteUsage(f); name == "" {
			syn = append(syn, "[-"+f.Name+"]")
		} else {
			syn = append(syn, "[-"+f.Name+" "+name+"]")
		}
	})
	if c.args != "" {
		syn = append(syn, c.args)
	}
	return strings.Join(syn, " ")
}

func printFlags(w io.Writer, fs *flag.FlagSet) {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// helpCommand is `cachesync help [command]`.
var helpCommand = &command{
	name:    "help",
	args:    "[COMMAND]",
	summary: "print the list of commands, or a command's help",
	help:    "Prints the list of commands, or the help and flags of COMMAND.",
}

func init() {
	// helpCommand refers to commands(), which lists it.
	helpCommand.setup = func(_ *command, _ *flag.FlagSet, o *stdio) func([]string) int {
		return func(args []string) int {
			if len(args) == 0 {
				usage(o.out)
				return 0
			}
			c, rest := lookup(args)
			switch {
			case c == nil && len(args) == 1 && slices.Contains(commandGroups(), args[0]):
				groupUsage(o.out, args[0])
				return 0
			case c == nil || len(rest) > 0:
				fmt.Fprintf(o.err, "cachesync help: unknown command %q\n\n", strings.Join(args, " "))
				usage(o.err)
				return 2
			}
			fs, _ := newFlagSet(c, o)
			commandUsage(o.out, c, fs)
			return 0
		}
	}
}
