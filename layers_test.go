package echo_test

import (
	"os"
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "github.com/seed-a9ef92a1/echo"

// layer is each library package's place in the dependency order: a
// package may import only packages of a lower layer. Packages not listed
// (bench, fuzz, tools) sit above the root and may import anything.
var layer = map[string]int{
	"pytree":          0,
	"spsc":            0,
	"internal/hist":   0,
	"internal/sockio": 0,
	"internal/poller": 0,
	"internal/readme": 0,
	"wire":            1,
	"ringbuf":         1,
	"tcp":             2,
	"":                3, // the root package, echo
}

// TestDependenciesPointDown checks that no library package imports one at
// its own layer or above: root → tcp → ringbuf, wire → pytree, spsc,
// internal, never back.
func TestDependenciesPointDown(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := rel(fields[0])
		from, ok := layer[pkg]
		if !ok {
			continue
		}
		seen++
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to, ok := layer[rel(imp)]
			if !ok {
				t.Errorf("%s imports %s, which is not a library package", show(pkg), rel(imp))
			} else if to >= from {
				t.Errorf("%s (layer %d) imports %s (layer %d): dependencies must point down", show(pkg), from, show(rel(imp)), to)
			}
		}
	}
	if seen != len(layer) {
		t.Errorf("go list showed %d of the %d library packages", seen, len(layer))
	}
}

// TestTopLevel checks the repository's top level against the design card:
// the library's packages, the harness and tools, and conventional extras.
func TestTopLevel(t *testing.T) {
	allowed := map[string]bool{
		"go.mod": true, "go.sum": true, "README.md": true, ".gitignore": true,
		"ringbuf": true, "spsc": true, "wire": true, "tcp": true, "pytree": true,
		"bench": true, "fuzz": true, "tools": true,
		"internal": true, "docs": true, "python": true, ".ci": true,
		".git": true, ".venv": true, "testdata": true, // not tracked
	}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() && path.Ext(name) == ".go" {
			continue // the root package
		}
		if !allowed[name] {
			t.Errorf("top-level entry %q is not on the design card", name)
		}
	}
}

func rel(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

func show(pkg string) string {
	if pkg == "" {
		return "echo"
	}
	return pkg
}
