//go:build linux

package echo_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The Python package (python/, import name echo_go) is tested by its own
// pytest suite, which these tests run with the project's .venv when it has
// the package (`.ci/run` installs it). Without it they skip, unless
// ECHO_REQUIRE_PYTHON=1, when they fail.

// packagePython returns the Python that has echo_go installed.
func packagePython(t *testing.T) string {
	t.Helper()
	return venvPython(t, "import echo_go, pytest; print(echo_go.__version__)", "ECHO_REQUIRE_PYTHON",
		"no Python with echo_go and pytest at %s (pip install ./python pytest, or run .ci/run): %v", "echo_go")
}

// TestPythonPackage runs the package's pytest suite: echo's documented
// usage through echo_go, zero copy, several learners, and faults.
func TestPythonPackage(t *testing.T) {
	py := packagePython(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pytest python/tests: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(string(out), 3))
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
