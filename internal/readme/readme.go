// Package readme rewrites the generated sections of a Markdown file: the
// text between a line "<!-- name:begin -->" and a line "<!-- name:end -->",
// which the project's tools fill with measured tables.
package readme

import (
	"fmt"
	"os"
	"strings"
)

// Check reports whether the file at path holds exactly one well-formed
// section name, so that a tool can refuse a file before a long run rather
// than after it.
func Check(path, name string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, _, err = find(path, string(b), name)
	return err
}

// Rewrite replaces the text between the markers of section name in the file
// at path with generated. It fails, writing nothing, when the file lacks
// the markers, holds either twice, or has them out of order.
func Rewrite(path, name, generated string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j, err := find(path, s, name)
	if err != nil {
		return err
	}
	s = s[:i] + "\n" + generated + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// find returns where the generated text of section name starts in s (just
// after the begin marker) and ends (at the start of the end marker's line).
// A marker counts only on a line of its own, so that prose may quote it.
func find(path, s, name string) (i, j int, err error) {
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	var begins, ends []int // offsets of the marker lines' ends, starts
	for off := 0; off < len(s); {
		line, _, _ := strings.Cut(s[off:], "\n")
		switch strings.TrimSpace(line) {
		case begin:
			begins = append(begins, off+len(line))
		case end:
			ends = append(ends, off)
		}
		off += len(line) + 1
	}
	switch {
	case len(begins) == 0 && len(ends) == 0:
		return 0, 0, fmt.Errorf("%s has no generated %s section: add a line %s and a line %s where it should go", path, name, begin, end)
	case len(begins) != 1 || len(ends) != 1:
		return 0, 0, fmt.Errorf("%s has %d lines %s and %d lines %s, want one of each", path, len(begins), begin, len(ends), end)
	case ends[0] < begins[0]:
		return 0, 0, fmt.Errorf("%s has %s before %s", path, end, begin)
	}
	return begins[0], ends[0], nil
}
