// Package cli holds what echo's commands share as Unix tools: flags parsed
// from their own flag.FlagSet, with a help text that starts with what the
// command does, and a progress line drawn on stderr only when stderr is a
// terminal, so that stdout and redirected files carry results alone.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Command is a command's name, what it does and its flags.
type Command struct {
	// Name is the command's name, as the user types it.
	Name string
	// Summary says in one line what the command does.
	Summary string
	// Args describes what follows the name on the usage line; empty means
	// "[flags]".
	Args string
	// Flags are the command's own flags; Parse owns their output and
	// their Usage.
	Flags *flag.FlagSet
}

// New returns a command with an empty flag set, ready for its flags.
func New(name, summary string) *Command {
	return &Command{Name: name, Summary: summary, Flags: flag.NewFlagSet(name, flag.ContinueOnError)}
}

// Parse parses args (os.Args[1:]) into c.Flags. With -h or --help it
// prints the help on stdout and exits 0; on a bad flag or a stray argument
// it prints the error and the usage line on stderr and exits 2.
func (c *Command) Parse(args []string) {
	c.Flags.SetOutput(io.Discard) // Parse's own messages; ours follow
	c.Flags.Usage = func() {}
	err := c.Flags.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.PrintHelp(os.Stdout)
		os.Exit(0)
	case err == nil && c.Flags.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", c.Flags.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\nUsage: %s %s (--help lists the flags)\n", c.Name, err, c.Name, c.args())
		os.Exit(2)
	}
}

func (c *Command) args() string {
	if c.Args == "" {
		return "[flags]"
	}
	return c.Args
}

// PrintHelp writes the summary, the usage line and every flag with its
// meaning and default.
func (c *Command) PrintHelp(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nUsage: %s %s\n\nFlags:\n", c.Summary, c.Name, c.args())
	c.Flags.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintf(w, "%s\n        %s", line, strings.ReplaceAll(usage, "\n", "\n        "))
		if def := f.DefValue; def != "" && def != "0" && def != "0s" && def != "false" {
			if g, ok := f.Value.(flag.Getter); ok {
				if _, isString := g.Get().(string); isString {
					def = fmt.Sprintf("%q", def)
				}
			}
			fmt.Fprintf(w, " (default %s)", def)
		}
		fmt.Fprintln(w)
	})
}

// Progress is one line of progress on stderr, redrawn in place with a
// carriage return. It draws only when stderr is a terminal; elsewhere
// (a file, a pipe, a CI log) its methods do nothing. It is not safe for
// concurrent use.
type Progress struct {
	w     io.Writer // nil: not a terminal, draw nothing
	width int       // runes on the line now, to blank what a shorter line leaves
}

// NewProgress returns a progress line on stderr.
func NewProgress() *Progress {
	if !IsTerminal(os.Stderr) {
		return &Progress{}
	}
	return &Progress{w: os.Stderr}
}

// progressWidth is the most a progress line shows: a line that wraps on an
// 80-column terminal could not be redrawn with a carriage return.
const progressWidth = 79

// Printf replaces the line with the formatted text, cut to 79 columns.
func (p *Progress) Printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	s := []rune(fmt.Sprintf(format, args...))
	s = s[:min(len(s), progressWidth)]
	fmt.Fprintf(p.w, "\r%s%s", string(s), strings.Repeat(" ", max(0, p.width-len(s))))
	p.width = len(s)
}

// Clear blanks the line and returns the cursor to its start, so that what
// is printed next, on stdout or stderr, begins on a clean line.
func (p *Progress) Clear() {
	if p.w == nil || p.width == 0 {
		return
	}
	fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
	p.width = 0
}

// IsTerminal reports whether f is a terminal (a character device; /dev/null
// is one too, where drawing costs nothing and shows nothing).
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
