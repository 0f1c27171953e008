package readme

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	os.WriteFile(path, []byte("a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n"), 0o644)
	if err := Rewrite(path, "x", "new\n"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := "a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n"; string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if err := Rewrite(path, "y", "z"); err == nil {
		t.Fatal("a missing section rewrote nothing without an error")
	}
}
