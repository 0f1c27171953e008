// Package readme rewrites the generated sections of a Markdown file: the
// text between "<!-- name:begin -->" and "<!-- name:end -->", which the
// project's tools fill with measured tables.
package readme

import (
	"fmt"
	"os"
	"strings"
)

// Rewrite replaces the text between the markers of section name in the file
// at path with generated.
func Rewrite(path, name, generated string) error {
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s … %s section", path, begin, end)
	}
	s = s[:i+len(begin)] + "\n" + generated + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
