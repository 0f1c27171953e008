//go:build linux

package echo_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMEExamplesBuild builds every Go program in README.md (each
// ```go block that is a whole package main) against this module, so the
// front page cannot drift from the API.
func TestREADMEExamplesBuild(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := goPrograms(string(readme))
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```go block holding a package main")
	}
	goCmd := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		goCmd = "go"
	}
	for i, src := range blocks {
		// Inside the module (testdata is outside every ./... pattern), so
		// the program builds against this checkout, not a download.
		dir := filepath.Join("testdata", fmt.Sprintf("readme-example-%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(goCmd, "build", "-o", os.DevNull, "./"+filepath.ToSlash(dir)).CombinedOutput()
		if err != nil {
			t.Errorf("README.md Go example %d does not build: %v\n%s", i+1, err, out)
		}
	}
	t.Cleanup(func() { os.Remove("testdata") }) // only if empty: it may hold other files
}

// goPrograms returns the ```go blocks of a Markdown text that declare
// package main.
func goPrograms(md string) []string {
	var out []string
	for {
		i := strings.Index(md, "```go\n")
		if i < 0 {
			return out
		}
		md = md[i+len("```go\n"):]
		j := strings.Index(md, "```")
		if j < 0 {
			return out
		}
		if block := md[:j]; strings.HasPrefix(strings.TrimSpace(block), "package main") {
			out = append(out, block)
		}
		md = md[j+3:]
	}
}
