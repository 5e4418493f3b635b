package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one subcommand of custodyctl: its name, the synopsis of its
// positional arguments, its help text and its flags. Its --help is
// generated from these, so the help cannot drift from the flags it
// describes, and each command refuses the flags of every other.
type command struct {
	name    string // full name after "custodyctl", e.g. "order create"
	args    string // synopsis of the positional arguments, e.g. "ID"
	summary string // one line, for the parent's list of commands
	details string // paragraphs after the summary in --help; may be ""
	// minArgs and maxArgs bound the positional arguments (maxArgs < 0:
	// no bound).
	minArgs, maxArgs int
	// setup declares the command's flags on fs and returns the function
	// that runs it with the positional arguments, after fs is parsed.
	setup func(fs *flag.FlagSet) func(args []string) error
}

// execute parses args (flags and positional arguments may be mixed; "--"
// ends the flags) and runs the command. -h/--help prints the help on
// stdout and succeeds; a bad flag or a wrong number of arguments is a
// usageError naming the command, with a hint to its --help.
func (c *command) execute(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("custodyctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, help below
	runFn := c.setup(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				_, err := io.WriteString(stdout, c.help(fs))
				return err
			}
			return c.usageErr(flagError(err))
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	switch {
	case len(pos) < c.minArgs:
		return c.usageErr(fmt.Sprintf("missing argument: want %s", c.args))
	case c.maxArgs >= 0 && len(pos) > c.maxArgs:
		return c.usageErr(fmt.Sprintf("unexpected argument %q", pos[c.maxArgs]))
	}
	return runFn(pos)
}

func (c *command) usageErr(msg string) error {
	return usageError{msg: c.name + ": " + msg, hint: "see custodyctl " + c.name + " --help"}
}

// synopsis is the command's usage line, without "Usage: ".
func (c *command) synopsis(fs *flag.FlagSet) string {
	s := "custodyctl " + c.name
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		s += " [flags]"
	}
	if c.args != "" {
		s += " " + c.args
	}
	return s
}

// help is the command's --help text, built from its fields and flags.
func (c *command) help(fs *flag.FlagSet) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Usage: %s\n\n%s\n", c.synopsis(fs), c.summary)
	if c.details != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimRight(c.details, "\n"))
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		b.WriteString("\nFlags:\n")
		fs.VisitAll(func(f *flag.Flag) {
			arg, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(&b, "  --%s", f.Name)
			if arg != "" {
				fmt.Fprintf(&b, " %s", arg)
			}
			fmt.Fprintf(&b, "\n      %s", usage)
			switch f.DefValue {
			case "", "0", "false":
			default:
				fmt.Fprintf(&b, " (default %s)", f.DefValue)
			}
			b.WriteString("\n")
		})
	}
	return b.String()
}

// group is a command with subcommands, e.g. "order".
type group struct {
	name    string
	summary string
	details string // may be ""
	subs    []*command
	groups  []*group // nested groups, e.g. "ceremony share"; named like subs
}

// execute runs the subcommand args[0]. "help", -h or --help print the
// list of subcommands ("help SUB" prints SUB's help); no arguments is a
// usage error.
func (g *group) execute(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{msg: g.name + ": a command is required", hint: "see custodyctl " + g.name + " --help"}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if args[0] == "help" && len(args) == 2 {
			if c := g.find(args[1]); c != nil {
				return c.execute([]string{"--help"}, stdout)
			}
		} else if len(args) == 1 {
			_, err := io.WriteString(stdout, g.help())
			return err
		}
		return usageError{msg: fmt.Sprintf("%s help: unexpected argument %q", g.name, args[len(args)-1]), hint: "see custodyctl " + g.name + " --help"}
	}
	if c := g.find(args[0]); c != nil {
		return c.execute(args[1:], stdout)
	}
	for _, sg := range g.groups {
		if sg.name == g.name+" "+args[0] {
			return sg.execute(args[1:], stdout)
		}
	}
	return usageError{msg: fmt.Sprintf("%s: unknown command %q", g.name, args[0]), hint: "see custodyctl " + g.name + " --help"}
}

func (g *group) find(name string) *command {
	for _, c := range g.subs {
		if c.name == g.name+" "+name {
			return c
		}
	}
	return nil
}

// help lists the group's subcommands with their synopses and summaries.
func (g *group) help() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Usage: custodyctl %s COMMAND [flags] [ARGS]\n\n%s\n", g.name, g.summary)
	if g.details != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimRight(g.details, "\n"))
	}
	b.WriteString("\nCommands:\n")
	for _, c := range g.subs {
		line := strings.TrimPrefix(c.name, g.name+" ")
		if c.args != "" {
			line += " " + c.args
		}
		fmt.Fprintf(&b, "  %-22s %s\n", line, c.summary)
	}
	for _, sg := range g.groups {
		fmt.Fprintf(&b, "  %-22s %s\n", strings.TrimPrefix(sg.name, g.name+" ")+" COMMAND", sg.summary)
	}
	fmt.Fprintf(&b, "\nRun custodyctl %s COMMAND --help for a command's flags.\n", g.name)
	return b.String()
}

// flagError words a flag package parse error for custodyctl's messages.
func flagError(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + name
	}
	return msg
}

// flagsRequired is the usage error of command name run without a flag it
// requires; msg says which.
func flagsRequired(name, msg string) error {
	return usageError{msg: name + ": " + msg, hint: "see custodyctl " + name + " --help"}
}
