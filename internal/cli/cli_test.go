package cli

import (
	"bytes"
	"flag"
	"strings"
	"testing"
)

func TestPrintHelp(t *testing.T) {
	testing.Init() // registers -test.* on flag.CommandLine, as echo-bench does
	c := New("tool", "tool does one thing.")
	c.Flags.Bool("quick", false, "run less")
	c.Flags.String("doc", "", "rewrite `FILE`")
	c.Flags.String("python", ".venv/bin/python", "a Python")
	c.Flags.Int("n", 8, "how many")
	var b bytes.Buffer
	c.PrintHelp(&b)
	want := `tool does one thing.

Usage: tool [flags]

Flags:
  --doc FILE
        rewrite FILE
  --n int
        how many (default 8)
  --python string
        a Python (default ".venv/bin/python")
  --quick
        run less
`
	if got := b.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if flag.Lookup("test.benchtime") == nil {
		t.Fatal("testing.Init registered no -test.benchtime")
	}
}

func TestProgress(t *testing.T) {
	var off Progress // not a terminal: draws nothing
	off.Printf("x")
	off.Clear()

	var b bytes.Buffer
	p := &Progress{w: &b}
	p.Printf("long line")
	p.Printf("short")
	p.Clear()
	p.Clear()
	if got, want := b.String(), "\rlong line\rshort    \r     \r"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	b.Reset()
	p.Printf("%s", strings.Repeat("é", 200))
	if got := len([]rune(b.String())); got != 1+progressWidth {
		t.Fatalf("a 200-rune line drew %d runes, want %d", got, 1+progressWidth)
	}
}
